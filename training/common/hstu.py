"""HSTU: Hierarchical Sequential Transduction Units ("Actions Speak Louder than Words", ICML'24).

One block, for input X (B, L, D) with H heads::

    U, V, Q, K = split(SiLU(W1 LayerNorm(X)))
    A          = SiLU(Q K^T + rab(positions, time gaps)) / max_len, causal mask
    Y          = X + W2(Dropout(LayerNorm(A V) * U))

The relative attention bias ``rab`` adds a learned scalar per relative position (j - i) and
per bucket of the time gap |ts_i - ts_j| (bucket = floor(4 * log2(1 + gap in seconds)),
so buckets are a quarter octave wide). Attention is pointwise (no softmax) and normalised by
``max_len``, a constant, so a position's output does not depend on how much padding follows.

Four switches of ``EncoderConfig`` choose between the reference implementation's choices and
this module's earlier ones (docs/training.md has the ablation): ``hstu_absolute_positions``
(input = item * sqrt(D) + learned absolute position, as the reference), ``hstu_uvqk_bias``
(the reference's U/V/Q/K projection has no bias), ``hstu_norm_affine`` (the reference's
LayerNorms have no scale or shift) and ``hstu_reference_init`` (the reference draws U/V/Q/K
and the relative biases from N(0, 0.02), the output projection Xavier-uniform and the
positions N(0, 1/D); otherwise PyTorch's Linear defaults and zero biases).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.common.config import EncoderConfig
from training.common.encoders import InputEmbedding, SequenceEncoder, causal_attention_inputs

BUCKETS_PER_OCTAVE = 4
REFERENCE_STD = 0.02


def time_gap_buckets(timestamps: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """(B, L, L) bucket of |ts_i - ts_j| for timestamps in epoch ms (B, L)."""
    gap_s = (timestamps.unsqueeze(2) - timestamps.unsqueeze(1)).abs().div(1000.0)
    buckets = torch.floor(torch.log2(1.0 + gap_s) * BUCKETS_PER_OCTAVE).long()
    return buckets.clamp(max=num_buckets - 1)


class HSTUBlock(nn.Module):
    """One HSTU layer with its own relative position and time-gap biases."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.heads = config.num_heads
        self.max_len = config.max_len
        affine = config.hstu_norm_affine
        self.input_norm = nn.LayerNorm(config.dim, elementwise_affine=affine)
        self.uvqk = nn.Linear(config.dim, 4 * config.dim, bias=config.hstu_uvqk_bias)
        self.attention_norm = nn.LayerNorm(config.dim, elementwise_affine=affine)
        self.output = nn.Linear(config.dim, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.position_bias = nn.Parameter(torch.zeros(2 * config.max_len - 1))
        self.time_bias = nn.Parameter(torch.zeros(config.time_buckets))
        if config.hstu_reference_init:
            for weight in (self.uvqk.weight, self.position_bias, self.time_bias):
                nn.init.normal_(weight, std=REFERENCE_STD)
            nn.init.xavier_uniform_(self.output.weight)
            nn.init.zeros_(self.output.bias)
            if self.uvqk.bias is not None:
                nn.init.zeros_(self.uvqk.bias)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, relative_positions: torch.Tensor, gap_buckets: torch.Tensor
    ) -> torch.Tensor:
        batch, length, dim = x.shape
        u, v, q, k = F.silu(self.uvqk(self.input_norm(x))).chunk(4, dim=-1)
        q, k, v = (t.view(batch, length, self.heads, dim // self.heads).transpose(1, 2) for t in (q, k, v))
        bias = self.position_bias[relative_positions] + self.time_bias[gap_buckets]  # (B, L, L)
        attention = F.silu(q @ k.transpose(-1, -2) + bias.unsqueeze(1)) / self.max_len
        attention = attention * mask  # (B, H, L, L) * (B, 1, L, L)
        mixed = (attention @ v).transpose(1, 2).reshape(batch, length, dim)
        return x + self.output(self.dropout(self.attention_norm(mixed) * u))


class HSTU(SequenceEncoder):
    """Stacked HSTU blocks over item + action embeddings (+ absolute positions when configured)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        position_std = math.sqrt(1.0 / config.dim) if config.hstu_reference_init else REFERENCE_STD
        self.inputs = InputEmbedding(config, positional=config.hstu_absolute_positions, position_std=position_std)
        self.blocks = nn.ModuleList(HSTUBlock(config) for _ in range(config.num_blocks))

    def encode(
        self, item_emb: torch.Tensor, action_ids: torch.Tensor, timestamps: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        relative_positions, allowed = causal_attention_inputs(valid, self.config.max_len)
        mask = allowed.to(item_emb.dtype)
        gap_buckets = time_gap_buckets(timestamps, self.config.time_buckets)
        x = self.inputs(item_emb, action_ids, valid)
        for block in self.blocks:
            x = block(x, mask, relative_positions, gap_buckets)
        return x

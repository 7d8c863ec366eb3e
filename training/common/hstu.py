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

Attention (``hstu_attention``): ``reference`` computes every block's (B, H, L, L) scores at
once and keeps them for backward, with the (B, L, L) time-gap buckets shared by all blocks.
``chunked`` computes the same numbers for blocks of ``hstu_attention_chunk`` queries against the
keys they may see (a causal query block [i0, i1) reads keys [0, i1), so about half the score
FLOPs of a full sequence), its biases built from the timestamps for that block only, and each
block recomputed in backward (activation checkpointing): what a step holds is one block's
(B, H, chunk, L) scores instead of every block's (B, H, L, L). Pointwise SiLU attention is no
softmax, so ``scaled_dot_product_attention`` and FlexAttention (softmax over score_mod) do not
apply; a fused GPU kernel that never writes the scores (generative-recommenders' Triton and
CUDA HSTU attention) would, and is not part of this module.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from training.common.config import EncoderConfig
from training.common.encoders import InputEmbedding, SequenceEncoder, causal_attention_inputs

BUCKETS_PER_OCTAVE = 4
REFERENCE_STD = 0.02


def time_gap_buckets(
    timestamps: torch.Tensor, num_buckets: int, queries: tuple[int, int] | None = None
) -> torch.Tensor:
    """(B, L, L) bucket of |ts_i - ts_j| for timestamps in epoch ms (B, L); with ``queries``
    (i0, i1), only rows i0 .. i1 - 1 against columns 0 .. i1 - 1: (B, i1 - i0, i1)."""
    rows, columns = timestamps, timestamps
    if queries is not None:
        rows, columns = timestamps[:, queries[0] : queries[1]], timestamps[:, : queries[1]]
    gap_s = (rows.unsqueeze(2) - columns.unsqueeze(1)).abs().div(1000.0)
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

    def forward(self, x: torch.Tensor, context: AttentionContext) -> torch.Tensor:
        batch, length, dim = x.shape
        u, v, q, k = F.silu(self.uvqk(self.input_norm(x))).chunk(4, dim=-1)
        q, k, v = (t.view(batch, length, self.heads, dim // self.heads).transpose(1, 2) for t in (q, k, v))
        if context.pairs is None:
            attended = self._chunked_attention(q, k, v, context)
        else:
            attended = self._attention(q, k, v, *context.pairs)
        mixed = attended.transpose(1, 2).reshape(batch, length, dim)
        return x + self.output(self.dropout(self.attention_norm(mixed) * u))

    def _attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        relative_positions: torch.Tensor,
        gap_buckets: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """(B, H, Q, Dh) outputs of queries q (B, H, Q, Dh) over keys k, v (B, H, K, Dh), with the
        (Q, K) relative positions, (B, Q, K) time-gap buckets and (B, 1, Q, K) mask of those pairs."""
        bias = self.position_bias[relative_positions] + self.time_bias[gap_buckets]  # (B, Q, K)
        attention = F.silu(q @ k.transpose(-1, -2) + bias.unsqueeze(1)) / self.max_len
        return (attention * mask) @ v

    def _chunked_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, context: AttentionContext
    ) -> torch.Tensor:
        """``_attention`` over blocks of ``context.chunk`` queries, each against the keys up to its
        last query, each block recomputed in backward when gradients are recorded."""
        outputs = []
        for start in range(0, q.shape[2], context.chunk):
            end = min(start + context.chunk, q.shape[2])
            block = (q[:, :, start:end], k[:, :, :end], v[:, :, :end], context, start)
            if torch.is_grad_enabled():
                outputs.append(checkpoint(self._attention_block, *block, use_reentrant=False))
            else:
                outputs.append(self._attention_block(*block))
        return torch.cat(outputs, dim=2)

    def _attention_block(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, context: AttentionContext, start: int
    ) -> torch.Tensor:
        """Queries ``start .. start + Q - 1`` (q: (B, H, Q, Dh)) over keys ``0 .. K - 1``."""
        end = start + q.shape[2]
        queries = torch.arange(start, end, device=q.device)
        keys = torch.arange(k.shape[2], device=q.device)
        relative_positions = keys.unsqueeze(0) - queries.unsqueeze(1) + self.max_len - 1
        causal = keys.unsqueeze(0) <= queries.unsqueeze(1)
        mask = (causal.unsqueeze(0) & context.valid[:, None, : k.shape[2]]).unsqueeze(1).to(q.dtype)
        gap_buckets = time_gap_buckets(context.timestamps, context.time_buckets, queries=(start, end))
        return self._attention(q, k, v, relative_positions, gap_buckets, mask)


@dataclasses.dataclass(frozen=True)
class AttentionContext:
    """What every HSTU block's attention reads besides its input: the timestamps and valid
    positions of the batch and, for the reference attention, the pair inputs built once for all
    blocks: (L, L) relative positions, (B, L, L) time-gap buckets and the (B, 1, L, L) mask in the
    input's dtype. Without them (chunked attention) each block builds its chunks' own."""

    timestamps: torch.Tensor  # (B, L) epoch ms
    valid: torch.Tensor  # (B, L) bool
    time_buckets: int
    chunk: int
    pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


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
        config = self.config
        pairs = None
        if config.hstu_attention == "reference":
            relative_positions, allowed = causal_attention_inputs(valid, config.max_len)
            gap_buckets = time_gap_buckets(timestamps, config.time_buckets)
            pairs = (relative_positions, gap_buckets, allowed.to(item_emb.dtype))
        context = AttentionContext(timestamps, valid, config.time_buckets, config.hstu_attention_chunk, pairs)
        x = self.inputs(item_emb, action_ids, valid)
        for block in self.blocks:
            x = block(x, context)
        return x

"""FuXi-alpha (Ye et al., WWW'25; reference code USTC-StarTeam/FuXi-alpha, a fork of the HSTU code).

One block, for input X (B, L, D) with H heads (each head D / H wide)::

    U, V, Q, K = split(SiLU(RMSNorm(X) W))                  U is 3·D wide, V, Q, K D each
    semantic   = SiLU(Q Kᵀ) / max_len ⊙ causal_mask          per head, as HSTU's attention
    positional = w_pos[j − i] ⊙ causal_mask                   one learned weight per relative position
    temporal   = w_time[bucket(|ts_i − ts_j|)] ⊙ causal_mask  one learned weight per time-gap bucket
    A          = concat(positional V, temporal V, semantic V)   per head: 3·D wide
    X'         = W0 Dropout(RMSNorm(A) ⊙ U) + X                 the multi-stage FFN, stage 1
    Y          = W2(SiLU(W1 h) ⊙ W3 h) + X',  h = Dropout(RMSNorm(X'))   stage 2 (SwiGLU)

Unlike HSTU, the positional and temporal weights are not added to the attention logits: each is
its own channel whose weights multiply V directly (Adaptive Multi-channel Self-attention). The
time buckets are the reference's: floor(ln(gap in seconds) / 0.301), gaps under a second in
bucket 0, capped at ``time_buckets``. The input is the scaled item embedding plus a learned
absolute position (``fuxi_absolute_positions``, on as in the reference) and the action embedding.

Where this departs from the reference without a switch, the Retriever seam decides: the
temporal channel reads the gap between the query position's own event and each earlier one
(the reference reads the *next* event's time, which a history-only query does not have, the
same choice as this project's HSTU), and the semantic channel is normalised by ``max_len``
(the reference divides by its padded length, max_len + 11 output slots: a constant).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.common.config import EncoderConfig
from training.common.encoders import InputEmbedding, SequenceEncoder, causal_attention_inputs

REFERENCE_STD = 0.02
RMS_EPS = 1e-6
LOG_DIVISOR = 0.301  # the reference divides the natural log by log10(2): about 2.3 buckets per octave
CHANNELS = 3  # positional, temporal, semantic


def fuxi_time_buckets(timestamps: torch.Tensor, max_bucket: int) -> torch.Tensor:
    """(B, L, L) bucket in [0, max_bucket] of |ts_i - ts_j| for timestamps in epoch ms (B, L)."""
    gap_s = (timestamps.unsqueeze(2) - timestamps.unsqueeze(1)).abs().double().div(1000.0)
    return torch.floor(torch.log(gap_s.clamp(min=1.0)) / LOG_DIVISOR).long().clamp(0, max_bucket)


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm over the last dimension, without a learned scale (as the reference)."""
    return F.rms_norm(x, (x.shape[-1],), eps=RMS_EPS)


class MultiStageFFN(nn.Module):
    """Project the three channels back to D with a residual, then an RMSNorm + SwiGLU stage with
    its own residual; weights Xavier-uniform, the projection back keeps its bias (the reference's)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.project = nn.Linear(CHANNELS * dim, dim)
        self.gate = nn.Linear(dim, dim, bias=False)
        self.up = nn.Linear(dim, dim, bias=False)
        self.down = nn.Linear(dim, dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        for layer in (self.project, self.gate, self.up, self.down):
            nn.init.xavier_uniform_(layer.weight)

    def forward(self, attended: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = self.project(self.dropout(attended)) + x
        h = self.dropout(rms_norm(x))
        return self.down(F.silu(self.gate(h)) * self.up(h)) + x


class FuXiBlock(nn.Module):
    """One FuXi-alpha layer: adaptive multi-channel self-attention and the multi-stage FFN."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        dim = config.dim
        self.heads = config.num_heads
        self.max_len = config.max_len
        # No bias, N(0, 0.02), as the reference's single U/V/Q/K matrix.
        self.uvqk = nn.Parameter(torch.empty(dim, (CHANNELS + 3) * dim).normal_(std=REFERENCE_STD))
        self.position_weight = nn.Parameter(torch.empty(2 * config.max_len - 1).normal_(std=REFERENCE_STD))
        self.time_weight = nn.Parameter(torch.empty(config.time_buckets + 1).normal_(std=REFERENCE_STD))
        self.ffn = MultiStageFFN(dim, config.dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, relative_positions: torch.Tensor, gap_buckets: torch.Tensor
    ) -> torch.Tensor:
        batch, length, dim = x.shape
        u, v, q, k = F.silu(rms_norm(x) @ self.uvqk).split([CHANNELS * dim, dim, dim, dim], dim=-1)
        q, k, v = (t.view(batch, length, self.heads, dim // self.heads).transpose(1, 2) for t in (q, k, v))
        semantic = F.silu(q @ k.transpose(-1, -2)) / self.max_len * mask  # (B, H, L, L)
        positional = self.position_weight[relative_positions] * mask  # (L, L) * (B, 1, L, L): shared by heads
        temporal = self.time_weight[gap_buckets].unsqueeze(1) * mask
        channels = torch.cat([positional @ v, temporal @ v, semantic @ v], dim=-1)  # (B, H, L, 3 D/H)
        attended = channels.transpose(1, 2).reshape(batch, length, CHANNELS * dim)
        return self.ffn(u * rms_norm(attended), x)


class FuXiAlpha(SequenceEncoder):
    """Stacked FuXi-alpha blocks over item + action (+ absolute position) embeddings."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        # The reference's positions end up Xavier-normal (its reset_params runs after their own init).
        position_std = math.sqrt(2.0 / (config.max_len + config.dim))
        self.inputs = InputEmbedding(config, positional=config.fuxi_absolute_positions, position_std=position_std)
        self.blocks = nn.ModuleList(FuXiBlock(config) for _ in range(config.num_blocks))

    def encode(
        self, item_emb: torch.Tensor, action_ids: torch.Tensor, timestamps: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        relative_positions, allowed = causal_attention_inputs(valid, self.config.max_len)
        mask = allowed.to(item_emb.dtype)
        gap_buckets = fuxi_time_buckets(timestamps, self.config.time_buckets)
        x = self.inputs(item_emb, action_ids, valid)
        for block in self.blocks:
            x = block(x, mask, relative_positions, gap_buckets)
        return x

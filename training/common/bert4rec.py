"""BERT4Rec (Sun et al., CIKM'19): a bidirectional transformer trained to recover masked items; as
the auto-encoding side of yueqirex/ModSAR's AE vs AR comparison (its ``BERT4REC/env_bert4rec``).

Input: LayerNorm(item + type + position (+ action) embedding), then dropout; the items of masked
positions are replaced by the mask token's own learned row. Each block is post-norm::

    x' = LayerNorm(x + Dropout(MHA(x)))          softmax attention over every valid position (no causal mask)
    y  = LayerNorm(x' + Dropout(W2 GELU(W1 x')))  W1: D -> 4·D, GELU's tanh form, no dropout inside

and an output layer LayerNorm(GELU(W x)). Every weight starts truncated-normal (std 0.02, within
±0.04), biases zero, LayerNorms at their defaults, as the reference's ``truncated_normal_resample``.

Training (``masked_item`` objective, ``training.common.loss``): ``mask_positions`` picks the
reference's count of positions per history, ``mask_action_ids`` marks them with ``MASK_ACTION``, and
each masked position's output is scored against the item that was there. A query is the output at
a mask token appended after the history (``append_mask_token``): the Retriever does it for every
model whose objective is ``masked_item``, so training validation, evaluation and serving agree.

``bert4rec_causal`` (off, as the reference's AE setting) adds the causal mask: with the
``next_item`` objective that is the reference's AR setting, the same network trained as SASRec is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ingestion.schema import ACTION_IDS
from training.common.config import EncoderConfig
from training.common.encoders import SequenceEncoder

MASK_ACTION = len(ACTION_IDS) + 1  # the action id that marks a masked position (0 = padding)
INIT_STD = 0.02
INIT_BOUND = 0.04
FFN_MULTIPLIER = 4
NORM_EPS = 1e-12  # the reference's LayerNorm epsilon
MASKED_SCORE = -1e4  # the reference's attention logit of a key a query may not see


class BERT4RecBlock(nn.Module):
    """Multi-head softmax attention and a GELU feed-forward layer, each residual then LayerNorm."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        dim = config.dim
        self.heads = config.num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attention_out = nn.Linear(dim, dim)
        self.attention_norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.ffn = nn.Sequential(
            nn.Linear(dim, FFN_MULTIPLIER * dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(FFN_MULTIPLIER * dim, dim),
        )
        self.ffn_norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.dropout = nn.Dropout(config.dropout)
        self.attention_dropout = config.dropout

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        dropout = self.attention_dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout)
        attended = attended.transpose(1, 2).reshape(batch, length, dim)
        x = self.attention_norm(x + self.dropout(self.attention_out(attended)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class BERT4Rec(SequenceEncoder):
    """Stacked bidirectional blocks over item (or mask) + type + position (+ action) embeddings."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        dim = config.dim
        self.mask_embedding = nn.Parameter(torch.empty(dim))  # the mask token's row
        self.type_embedding = nn.Parameter(torch.empty(dim))  # the reference's one token type
        self.positions = nn.Embedding(config.max_len, dim)
        self.actions = nn.Embedding(MASK_ACTION + 1, dim) if config.use_actions else None
        self.input_norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(BERT4RecBlock(config) for _ in range(config.num_blocks))
        self.output = nn.Sequential(nn.Linear(dim, dim), nn.GELU(approximate="tanh"), nn.LayerNorm(dim, eps=NORM_EPS))
        for name, parameter in self.named_parameters():
            if "norm" in name or "output.2" in name:
                continue  # LayerNorms keep ones and zeros
            if name.endswith("bias"):
                nn.init.zeros_(parameter)
            else:
                nn.init.trunc_normal_(parameter, std=INIT_STD, a=-INIT_BOUND, b=INIT_BOUND)

    def encode(
        self, item_emb: torch.Tensor, action_ids: torch.Tensor, timestamps: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        length = item_emb.shape[1]
        masked = (action_ids == MASK_ACTION).unsqueeze(-1)
        x = torch.where(masked, self.mask_embedding.to(item_emb.dtype), item_emb)
        x = x + self.type_embedding + self.positions.weight[:length]
        if self.actions is not None:
            x = x + self.actions(action_ids)
        x = self.dropout(self.input_norm(x))
        visible = valid.unsqueeze(1)  # (B, 1, L): every query sees every valid key
        if self.config.bert4rec_causal:
            positions = torch.arange(length, device=valid.device)
            visible = visible & (positions.unsqueeze(0) <= positions.unsqueeze(1))
        bias = torch.zeros(visible.shape, device=x.device).masked_fill(~visible, MASKED_SCORE).unsqueeze(1)
        for block in self.blocks:
            x = block(x, bias)
        return self.output(x)


def mask_positions(
    lengths: torch.Tensor, width: int, mask_prob: float, max_len: int, generator: torch.Generator
) -> torch.Tensor:
    """(B, width) bool: the positions to mask, drawn as the reference does: per history of n items
    ``min(int(max_len * mask_prob), max(1, round(n * mask_prob)))`` distinct positions, uniformly
    (round half to even, as Python's). ``lengths`` and ``generator`` on the CPU."""
    counts = torch.round(lengths.double() * mask_prob).long().clamp(min=1).clamp(max=int(max_len * mask_prob))
    positions = torch.arange(width).unsqueeze(0)
    valid = positions < lengths.unsqueeze(1)
    keys = torch.rand((len(lengths), width), generator=generator).masked_fill(~valid, math.inf)
    order = keys.argsort(dim=1).argsort(dim=1)  # each position's rank among its row's draws
    return (order < counts.unsqueeze(1)) & valid


def mask_action_ids(action_ids: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """``action_ids`` with the ``masked`` positions marked as the mask token (``MASK_ACTION``)."""
    return action_ids.masked_fill(masked, MASK_ACTION)


def append_mask_token(batch: dict[str, torch.Tensor], max_len: int) -> dict[str, torch.Tensor]:
    """A masked-item query batch: right-padded histories (``item_indices``, ``action_ids``,
    ``timestamps``, ``lengths``) with a mask token after each history's last event (its timestamp
    repeated). A history of ``max_len`` events loses its oldest one, so the query fits ``max_len``
    (the reference's evaluation likewise masks the last of its ``max_len`` positions)."""
    lengths = batch["lengths"]
    width = batch["item_indices"].shape[1]
    new_lengths = (lengths + 1).clamp(max=max_len)
    new_width = min(max(int(new_lengths.max()), 1) if len(lengths) else 1, max_len)
    start = (lengths + 1 - new_lengths).unsqueeze(1)  # 1 where the oldest event makes room
    columns = torch.arange(new_width, device=lengths.device).unsqueeze(0)
    source = (start + columns).clamp(max=width - 1)
    last = (new_lengths - 1).unsqueeze(1)
    real = columns < last
    out = {}
    for key in ("item_indices", "action_ids", "timestamps"):
        out[key] = batch[key].gather(1, source).masked_fill(~real, 0)
    out["action_ids"] = out["action_ids"].masked_fill(columns == last, MASK_ACTION)
    last_stamp = batch["timestamps"].gather(1, (lengths - 1).clamp(min=0).unsqueeze(1))
    out["timestamps"] = torch.where(columns == last, last_stamp, out["timestamps"])
    out["lengths"] = new_lengths
    return out

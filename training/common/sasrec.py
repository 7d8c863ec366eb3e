"""SASRec (Kang & McAuley, 2018): a causal transformer over the history, the baseline of HSTU.

Blocks of causal multi-head self-attention and a feed-forward layer Linear(dim, ffn_dim) ->
ReLU -> Linear(ffn_dim, dim), both residual; learned absolute positions. Same inputs (item +
action embeddings), loss and evaluation as HSTU.

Two switches of ``EncoderConfig`` choose between this module's layout and RecBole's SASRec
(the reference of docs/training.md):

* ``sasrec_post_norm`` off (default): input = item * sqrt(dim) + action + position, dropped out;
  pre-LayerNorm blocks X + MHA(LN(X)), then X + FFN(LN(X)); a final LayerNorm. On (RecBole):
  input = LN(item + action + position), dropped out; post-LayerNorm blocks LN(X + MHA(X)), then
  LN(X + FFN(X)); no final LayerNorm.
* ``sasrec_reference_init``: RecBole's initialisation, every linear and attention projection
  weight N(0, 0.02) and their biases zero, instead of PyTorch's defaults (Xavier-uniform for the
  attention's input projection, Kaiming-uniform for the linear layers). The position and action
  embeddings are N(0, 0.02) and the item rows uniform with std 0.02 either way.
"""

from __future__ import annotations

import torch
from torch import nn

from training.common.config import EncoderConfig
from training.common.encoders import InputEmbedding, SequenceEncoder

REFERENCE_STD = 0.02


class SASRecBlock(nn.Module):
    """Causal multi-head self-attention and a ReLU feed-forward layer, both residual, pre- or
    post-LayerNorm (``sasrec_post_norm``)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.post_norm = config.sasrec_post_norm
        self.attention_norm = nn.LayerNorm(config.dim)
        self.attention = nn.MultiheadAttention(config.dim, config.num_heads, dropout=config.dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(config.dim)
        self.ffn = nn.Sequential(
            nn.Linear(config.dim, config.ffn_dim),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.ffn_dim, config.dim),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        if self.post_norm:
            attended, _ = self.attention(x, x, x, attn_mask=future, need_weights=False)
            x = self.attention_norm(x + self.dropout(attended))
            return self.ffn_norm(x + self.dropout(self.ffn(x)))
        h = self.attention_norm(x)
        attended, _ = self.attention(h, h, h, attn_mask=future, need_weights=False)
        x = x + self.dropout(attended)
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class SASRec(SequenceEncoder):
    """Stacked SASRec blocks over item + action + position embeddings."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        self.inputs = InputEmbedding(config, positional=True, normalised=config.sasrec_post_norm)
        self.blocks = nn.ModuleList(SASRecBlock(config) for _ in range(config.num_blocks))
        self.output_norm = nn.Identity() if config.sasrec_post_norm else nn.LayerNorm(config.dim)
        if config.sasrec_reference_init:
            reference_init(self.blocks)

    def encode(
        self, item_emb: torch.Tensor, action_ids: torch.Tensor, timestamps: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        length = item_emb.shape[1]
        positions = torch.arange(length, device=item_emb.device)
        future = positions.unsqueeze(0) > positions.unsqueeze(1)  # True = query i may not see key j
        x = self.inputs(item_emb, action_ids, valid)
        for block in self.blocks:
            x = block(x, future)
        return self.output_norm(x)


def reference_init(module: nn.Module) -> None:
    """RecBole's initialisation of ``module``'s linear layers and attention projections: weights
    N(0, 0.02), biases zero (LayerNorms keep scale 1, shift 0)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):  # the attention's output projection is one too
            nn.init.normal_(layer.weight, std=REFERENCE_STD)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.MultiheadAttention) and layer.in_proj_weight is not None:
            nn.init.normal_(layer.in_proj_weight, std=REFERENCE_STD)
            if layer.in_proj_bias is not None:
                nn.init.zeros_(layer.in_proj_bias)

"""SASRec (Kang & McAuley, 2018): a causal transformer over the history, the baseline of HSTU.

Pre-LayerNorm blocks: X + MHA(LN(X)) with a causal mask, then X + FFN(LN(X)) where the
FFN is Linear(dim, ffn_dim) -> ReLU -> Linear(ffn_dim, dim); learned absolute positions;
a final LayerNorm. Same inputs (item + action embeddings), loss and evaluation as HSTU.
"""

from __future__ import annotations

import torch
from torch import nn

from training.common.config import EncoderConfig
from training.common.encoders import InputEmbedding, SequenceEncoder


class SASRecBlock(nn.Module):
    """Causal multi-head self-attention and a ReLU feed-forward layer, both residual."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
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
        h = self.attention_norm(x)
        attended, _ = self.attention(h, h, h, attn_mask=future, need_weights=False)
        x = x + self.dropout(attended)
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class SASRec(SequenceEncoder):
    """Stacked SASRec blocks over item + action + position embeddings."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        self.inputs = InputEmbedding(config, positional=True)
        self.blocks = nn.ModuleList(SASRecBlock(config) for _ in range(config.num_blocks))
        self.output_norm = nn.LayerNorm(config.dim)

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

"""Sequential encoders: item embeddings of a right-padded history -> one hidden state per position.

Encoders own no item table: they take the (B, L, D) embeddings of the history items, so
the same encoder runs on a TorchRec table sharded by DistributedModelParallel (training)
and on a plain ``nn.Embedding`` (the plain-PyTorch baseline, evaluation, serving).
Position t's output sees positions <= t only (causal) and predicts the item at t + 1.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ingestion.schema import ACTION_IDS
from training.common.config import EncoderConfig


class InputEmbedding(nn.Module):
    """Item embedding (scaled by sqrt(dim), or with ``normalised`` as it is) + action-type embedding
    (+ absolute position); with ``normalised`` the sum is LayerNorm-ed; then dropout."""

    def __init__(
        self, config: EncoderConfig, positional: bool, position_std: float = 0.02, normalised: bool = False
    ) -> None:
        super().__init__()
        self.scale = 1.0 if normalised else math.sqrt(config.dim)
        self.norm = nn.LayerNorm(config.dim) if normalised else None
        self.actions = nn.Embedding(len(ACTION_IDS) + 1, config.dim) if config.use_actions else None
        self.positions = nn.Embedding(config.max_len, config.dim) if positional else None
        self.dropout = nn.Dropout(config.dropout)
        if self.actions is not None:
            nn.init.normal_(self.actions.weight, std=0.02)
        if self.positions is not None:
            nn.init.normal_(self.positions.weight, std=position_std)

    def forward(self, item_emb: torch.Tensor, action_ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = item_emb * self.scale
        if self.actions is not None:
            x = x + self.actions(action_ids)
        if self.positions is not None:
            x = x + self.positions.weight[: x.shape[1]]
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x) * valid.unsqueeze(-1)


class SequenceEncoder(nn.Module):
    """Base of HSTU and SASRec: ``forward(item_emb, action_ids, timestamps, lengths)``."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config

    def forward(
        self, item_emb: torch.Tensor, action_ids: torch.Tensor, timestamps: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """(B, L, D) hidden states; rows are zero beyond each sequence's length."""
        length = item_emb.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"history of length {length} exceeds the encoder's max_len {self.config.max_len}")
        valid = torch.arange(length, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
        return self.encode(item_emb, action_ids, timestamps, valid) * valid.unsqueeze(-1)

    def encode(
        self, item_emb: torch.Tensor, action_ids: torch.Tensor, timestamps: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError


def last_hidden(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, D) hidden state at each row's last real position (the next-item query)."""
    index = (lengths - 1).clamp(min=0)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def causal_attention_inputs(valid: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The relative position of every (query i, key j) pair, offset into ``[0, 2 * max_len - 1)``,
    and the (B, 1, L, L) mask of the keys a query may attend to: itself, earlier, and not padding."""
    length = valid.shape[1]
    positions = torch.arange(length, device=valid.device)
    relative_positions = positions.unsqueeze(0) - positions.unsqueeze(1) + max_len - 1
    causal = positions.unsqueeze(0) <= positions.unsqueeze(1)  # key j <= query i
    return relative_positions, (causal.unsqueeze(0) & valid.unsqueeze(1)).unsqueeze(1)

"""The sharded twin of ``training.retrieval.model.RetrievalModel``: the item table as the
shared TorchRec table of ``training.common.sharded_table`` so DistributedModelParallel can
shard it. It is what Ray Train workers train; ``training.common.sharded_table.plain_weights``
/ ``sharded_weights`` convert state dicts between the two forms (the exported model is always
the plain one).
"""

from __future__ import annotations

import torch
from torchrec import KeyedJaggedTensor

from training.common.config import EncoderConfig
from training.common.model import build_encoder
from training.common.sharded_table import CANDIDATES, HISTORY, ShardedTableModel


class ShardedRetrievalModel(ShardedTableModel):
    """Training model: the sharded item table plus the encoder (replicated, data-parallel)."""

    def __init__(self, config: EncoderConfig, num_items: int, table_device: torch.device | None = None) -> None:
        super().__init__(config.dim, num_items, table_device)
        self.config = config
        self.encoder = build_encoder(config)

    def forward(
        self, lookups: KeyedJaggedTensor, action_ids: torch.Tensor, timestamps: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(hidden (B, L, D), history embeddings (B, L, D), candidate embeddings (C, D))."""
        embedded = self.item_table(lookups)
        dim = self.dim
        history_emb = embedded[HISTORY].to_padded_dense(action_ids.shape[1])[..., :dim]
        hidden = self.encoder(history_emb, action_ids, timestamps, lengths)
        return hidden, history_emb, embedded[CANDIDATES].values()[:, :dim]

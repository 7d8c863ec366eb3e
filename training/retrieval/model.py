"""The plain retrieval model: an item table plus a sequential encoder, scored by cosine similarity.

``RetrievalModel`` keeps the item rows in a plain ``nn.Embedding``: the form a trained model
is exported in, evaluated, served (through ``training.retrieval.retriever.Retriever``) and trained in
the plain-PyTorch baseline of the benchmark. This module never imports TorchRec: its
sharded twin, ``training.retrieval.sharded_model.ShardedRetrievalModel``, is what Ray Train workers
train; both share the encoder classes and parameter names (``encoder.*``), so weights move
between them unchanged (``training.common.sharded_table``).
"""

from __future__ import annotations

import torch
from torch import nn

from training.common.config import EncoderConfig
from training.common.model import INIT_RANGE, build_encoder


class RetrievalModel(nn.Module):
    """Plain single-process model: ``nn.Embedding`` rows 0..num_items (0 = padding) + encoder."""

    def __init__(self, config: EncoderConfig, num_items: int) -> None:
        super().__init__()
        self.config = config
        self.num_items = num_items
        self.item_embedding = nn.Embedding(num_items + 1, config.dim)
        nn.init.uniform_(self.item_embedding.weight, -INIT_RANGE, INIT_RANGE)
        self.encoder = build_encoder(config)

    def forward(
        self, item_indices: torch.Tensor, action_ids: torch.Tensor, timestamps: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """(B, L, D) hidden states of right-padded histories (B, L)."""
        return self.encoder(self.item_embedding(item_indices), action_ids, timestamps, lengths)

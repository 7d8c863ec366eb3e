"""The sharded twin of ``training.retrieval.model.RetrievalModel``: the item table as a TorchRec
``EmbeddingCollection`` (one table, ``item``, read by two features: the ``history`` of each
row and the batch's ``candidates``) so DistributedModelParallel can shard it. It is what Ray
Train workers train; ``plain_weights`` / ``sharded_weights`` convert state dicts between the
two forms (the exported model is always the plain one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor

from training.retrieval.config import EncoderConfig
from training.retrieval.model import INIT_RANGE, PLAIN_WEIGHT, build_encoder

TABLE = "item"
HISTORY = "history"
CANDIDATES = "candidates"
TABLE_WEIGHT = f"item_table.embeddings.{TABLE}.weight"  # state-dict key of the sharded table


def table_width(dim: int) -> int:
    """Columns of the sharded item table: FBGEMM's fused kernels need a multiple of 4, so
    dim 50 (the reference) is stored in 52 columns whose last 2 are never read."""
    return -(-dim // 4) * 4


class ShardedRetrievalModel(nn.Module):
    """Training model: the item table as an EmbeddingCollection for DistributedModelParallel.

    Build it with ``table_device=torch.device("meta")``: DMP then allocates only each
    rank's shard of the table and initialises it uniform in [-INIT_RANGE, INIT_RANGE].
    The table has ``table_width(dim)`` columns; lookups keep the first ``dim``.
    """

    def __init__(self, config: EncoderConfig, num_items: int, table_device: torch.device | None = None) -> None:
        super().__init__()
        self.config = config
        self.num_items = num_items
        table = EmbeddingConfig(
            name=TABLE,
            embedding_dim=table_width(config.dim),
            num_embeddings=num_items + 1,
            feature_names=[HISTORY, CANDIDATES],
            weight_init_min=-INIT_RANGE,
            weight_init_max=INIT_RANGE,
        )
        self.item_table = EmbeddingCollection(tables=[table], device=table_device)
        self.encoder = build_encoder(config)

    def forward(
        self, lookups: KeyedJaggedTensor, action_ids: torch.Tensor, timestamps: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(hidden (B, L, D), history embeddings (B, L, D), candidate embeddings (C, D))."""
        embedded = self.item_table(lookups)
        dim = self.config.dim
        history_emb = embedded[HISTORY].to_padded_dense(action_ids.shape[1])[..., :dim]
        hidden = self.encoder(history_emb, action_ids, timestamps, lengths)
        return hidden, history_emb, embedded[CANDIDATES].values()[:, :dim]


def lookup_input(item_indices: torch.Tensor, lengths: torch.Tensor, candidate_ids: torch.Tensor) -> KeyedJaggedTensor:
    """The table lookups of a batch: each row's history items, and ``candidate_ids`` in row 0."""
    positions = torch.arange(item_indices.shape[1], device=item_indices.device).unsqueeze(0)
    history = item_indices[positions < lengths.unsqueeze(1)]
    candidate_lengths = torch.zeros_like(lengths)
    candidate_lengths[0] = len(candidate_ids)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=[HISTORY, CANDIDATES],
        values=torch.cat([history, candidate_ids]),
        lengths=torch.cat([lengths, candidate_lengths]),
    )


def plain_weights(sharded_state: dict[str, torch.Tensor], dim: int) -> dict[str, torch.Tensor]:
    """A full (gathered) ShardedRetrievalModel state dict as RetrievalModel weights (``dim`` columns)."""
    weights = {key: value for key, value in sharded_state.items() if key != TABLE_WEIGHT}
    weights[PLAIN_WEIGHT] = sharded_state[TABLE_WEIGHT][:, :dim].contiguous()
    return weights


def sharded_weights(plain_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RetrievalModel weights as a ShardedRetrievalModel state dict (the inverse of plain_weights;
    the table's unused padding columns are zero)."""
    weights = {key: value for key, value in plain_state.items() if key != PLAIN_WEIGHT}
    table = plain_state[PLAIN_WEIGHT]
    weights[TABLE_WEIGHT] = F.pad(table, (0, table_width(table.shape[1]) - table.shape[1]))
    return weights

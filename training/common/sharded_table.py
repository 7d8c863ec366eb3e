"""The sharded item table both model families train: one TorchRec ``EmbeddingCollection``
table, ``item``, read by two features (the ``history`` of each row and the batch's
``candidates``), so ``training.common.sharding.shard_model`` wraps either model in
DistributedModelParallel unchanged; and the conversion of state dicts between it and the
plain form (``PLAIN_WEIGHT``, an ``nn.Embedding``) every exported model has.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor

from training.common.model import INIT_RANGE, PLAIN_WEIGHT

TABLE = "item"
HISTORY = "history"
CANDIDATES = "candidates"
TABLE_WEIGHT = f"item_table.embeddings.{TABLE}.weight"  # state-dict key of the sharded table


def table_width(dim: int) -> int:
    """Columns of the sharded item table: FBGEMM's fused kernels need a multiple of 4, so
    dim 50 (the reference) is stored in 52 columns whose last 2 are never read."""
    return -(-dim // 4) * 4


class ShardedTableModel(nn.Module):
    """A training model whose item rows 0..num_items (0 = padding) are the sharded table
    ``item_table`` (``table_width(dim)`` columns; lookups keep the first ``dim``).

    Build it with ``table_device=torch.device("meta")``: DMP then allocates only each rank's
    shard of the table, and ``training.common.sharding`` initialises it.
    """

    def __init__(self, dim: int, num_items: int, table_device: torch.device | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.num_items = num_items
        table = EmbeddingConfig(
            name=TABLE,
            embedding_dim=table_width(dim),
            num_embeddings=num_items + 1,
            feature_names=[HISTORY, CANDIDATES],
            weight_init_min=-INIT_RANGE,
            weight_init_max=INIT_RANGE,
        )
        self.item_table = EmbeddingCollection(tables=[table], device=table_device)


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
    """A full (gathered) sharded model's state dict as plain-model weights (``dim`` columns)."""
    weights = {key: value for key, value in sharded_state.items() if key != TABLE_WEIGHT}
    weights[PLAIN_WEIGHT] = sharded_state[TABLE_WEIGHT][:, :dim].contiguous()
    return weights


def sharded_weights(plain_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain-model weights as a sharded model's state dict (the inverse of plain_weights; the
    table's unused padding columns are zero)."""
    weights = {key: value for key, value in plain_state.items() if key != PLAIN_WEIGHT}
    table = plain_state[PLAIN_WEIGHT]
    weights[TABLE_WEIGHT] = F.pad(table, (0, table_width(table.shape[1]) - table.shape[1]))
    return weights

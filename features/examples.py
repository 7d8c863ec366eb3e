"""Torch-ready next-item examples: the contract between features/ and training/.

One row per user and split. A row holds the user's history, right-padded with 0 to
``max_len``: item indices, action ids (``ingestion.schema.ACTION_IDS``, 0 = padding) and
timestamps (epoch ms), its length, and the item to predict after the history (``targets``;
0 in the train split, where every position predicts the next one).

``shard`` gives every Ray Train worker the same number of rows (the last rows are padded
with copies marked ``valid=False``), so sharded embedding collectives never wait on a rank
that ran out of batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from features.rows import PaddedRows

BATCH_KEYS = ("item_indices", "action_ids", "timestamps", "lengths", "targets", "valid")
LENGTH_WINDOW_BATCHES = 50  # batches whose rows are sorted by length together (see ``batches``)


@dataclass(frozen=True)
class SequenceExamples(PaddedRows):
    """Padded next-item examples of one split; row i belongs to ``user_ids[i]``."""

    ROW_ARRAYS = ("user_ids", "item_indices", "action_ids", "timestamps", "lengths", "targets")
    BATCH_KEYS = BATCH_KEYS

    user_ids: np.ndarray  # (N,) str
    item_indices: np.ndarray  # (N, max_len) int64, right-padded with 0
    action_ids: np.ndarray  # (N, max_len) int64, 0 = padding
    timestamps: np.ndarray  # (N, max_len) int64 epoch ms, 0 = padding
    lengths: np.ndarray  # (N,) int64, number of real positions
    targets: np.ndarray  # (N,) int64 item index to predict after the history; 0 = none
    num_items: int  # largest item index; embedding tables need num_items + 1 rows
    versions: dict[str, int] = field(default_factory=dict)  # Delta versions read
    valid: np.ndarray | None = None  # (N,) bool; False marks padding rows added by shard()

    def __post_init__(self) -> None:
        rows, max_len = self.item_indices.shape
        for name in ("action_ids", "timestamps"):
            if getattr(self, name).shape != (rows, max_len):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {(rows, max_len)}")
        for name in ("user_ids", "lengths", "targets"):
            if len(getattr(self, name)) != rows:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, expected {rows}")
        if self.valid is None:
            object.__setattr__(self, "valid", np.ones(rows, dtype=bool))
        if rows and (self.lengths.min() < 0 or self.lengths.max() > max_len):
            raise ValueError(f"lengths must lie in [0, {max_len}]")

    def batches(
        self, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = False, by_length: bool = False
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of torch tensors keyed by BATCH_KEYS; the last batch may be smaller.

        With ``by_length`` (and ``shuffle``) rows of similar length share a batch, so a batch
        padded to its longest history carries little padding: the shuffled rows are cut into
        windows of ``LENGTH_WINDOW_BATCHES`` batches, each window is sorted by length and cut
        into batches, and the batches are served in a random order. The number of batches is
        the same as without it, so every DMP rank still runs as many steps as the others.
        """
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        order = np.arange(len(self))
        if shuffle:
            rng = np.random.default_rng([seed, epoch, 1])
            order = rng.permutation(len(self))
            if by_length:
                order = self._length_grouped(order, batch_size, rng)
        for start in range(0, len(self), batch_size):
            rows = order[start : start + batch_size]
            yield self.batch(rows)

    def _length_grouped(self, order: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """``order`` regrouped so each batch holds rows of similar length, batches shuffled."""
        window = batch_size * LENGTH_WINDOW_BATCHES
        grouped = [
            chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            for chunk in (order[start : start + window] for start in range(0, len(order), window))
        ]
        rows = np.concatenate(grouped) if grouped else order
        batches = [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]
        full = [batch for batch in batches if len(batch) == batch_size]
        partial = [batch for batch in batches if len(batch) < batch_size]  # at most one: it stays last
        served = [full[i] for i in rng.permutation(len(full))] + partial
        return np.concatenate(served) if served else order

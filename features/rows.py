"""Row selection shared by the padded example sets (``features.examples.SequenceExamples``,
``features.ranking_reader.RankingExamples``): ``take`` rows, ``shard`` them evenly over Ray
Train workers (short ranks padded with copies marked ``valid=False``), ``batch`` them as tensors.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, ClassVar, Self

import numpy as np
import torch


class PaddedRows:
    """Mixin of a frozen dataclass of per-row arrays: the class names its (N, ...) arrays in
    ``ROW_ARRAYS`` and the arrays of a batch in ``BATCH_KEYS``; ``valid`` marks padding rows."""

    __dataclass_fields__: ClassVar[dict[str, Any]]  # set by @dataclass on the class (for replace)
    ROW_ARRAYS: ClassVar[tuple[str, ...]]
    BATCH_KEYS: ClassVar[tuple[str, ...]]
    item_indices: np.ndarray  # (N, max_len)
    lengths: np.ndarray  # (N,)
    valid: np.ndarray | None

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def max_len(self) -> int:
        return int(self.item_indices.shape[1])

    @property
    def valid_mask(self) -> np.ndarray:
        """``valid`` as an array: ``__post_init__`` fills it in when the constructor is not given one."""
        if self.valid is None:
            raise ValueError(f"{type(self).__name__}.valid is None: it is set in __post_init__")
        return self.valid

    def take(self, rows: np.ndarray) -> Self:
        """The examples at ``rows`` (an index array), in that order."""
        arrays = {name: getattr(self, name)[rows] for name in self.ROW_ARRAYS}
        return replace(self, **arrays, valid=self.valid_mask[rows])

    def shard(self, rank: int, world_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = False) -> Self:
        """This worker's rows: every rank gets ceil(N / world_size) rows.

        With ``shuffle`` the rows are permuted by (seed, epoch) first, identically on every
        rank, so the shards of one epoch are disjoint and cover every row.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        order = np.arange(len(self))
        if shuffle:
            order = np.random.default_rng([seed, epoch]).permutation(len(self))
        per_rank = math.ceil(len(self) / world_size) if len(self) else 0
        mine = order[rank * per_rank : (rank + 1) * per_rank]
        missing = per_rank - len(mine)
        if missing == 0:
            return self.take(mine)
        filler = order[:missing] if len(order) else np.zeros(0, dtype=np.int64)
        padded = self.take(np.concatenate([mine, filler]))
        valid = padded.valid_mask.copy()
        valid[len(mine) :] = False
        return replace(padded, valid=valid)

    def batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The arrays of ``BATCH_KEYS`` at ``rows`` as torch tensors."""
        return {
            key: torch.from_numpy(self.valid_mask[rows] if key == "valid" else getattr(self, key)[rows])
            for key in self.BATCH_KEYS
        }

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

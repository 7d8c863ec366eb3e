"""The ranking reader: pinned Delta versions of features/ranking_examples -> RankingExamples.

Reads with deltalake and pyarrow only, so every Ray Train worker calls it itself::

    versions = latest_ranking_versions(settings)                 # on the driver; recorded by the run
    train = load_ranking_examples(settings, "train", versions)   # in each worker
    mine = train.shard(rank, world_size, seed=seed, epoch=epoch, shuffle=True)

Rows come sorted by (user_id, ts, Kafka position), so the same versions and arguments give the
same examples. By default rows whose label window is still open at the table's watermark
(``ts + window_ms`` beyond the largest event ts silver held) are left out: their labels
could still change. The row's ``anchor_action`` is never an input (for an organic exposure
it *is* the label).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from deltalake import DeltaTable

from features.rows import PaddedRows
from features.splits import gather
from features.tables import (
    ITEM_VOCAB_TABLE,
    LABEL_COLUMNS,
    RANKING_EXAMPLES_SCHEMA,
    RANKING_EXAMPLES_TABLE,
    RANKING_TASKS,
    SPLIT_NAMES,
    ranking_state,
)
from infra.lake import table_version
from infra.settings import Settings
from ingestion.schema import ACTIONS

TASKS: tuple[str, ...] = tuple(RANKING_TASKS)
RANKING_BATCH_KEYS = ("item_indices", "action_ids", "timestamps", "lengths", "candidates", "ts", "labels", "valid")


@dataclass(frozen=True)
class RankingVersions:
    """The Delta versions a ranking run reads (record them with the run)."""

    item_vocab: int
    ranking_examples: int

    def as_dict(self) -> dict[str, int]:
        return {ITEM_VOCAB_TABLE: self.item_vocab, RANKING_EXAMPLES_TABLE: self.ranking_examples}

    @classmethod
    def from_dict(cls, versions: dict[str, int]) -> RankingVersions:
        return cls(item_vocab=int(versions[ITEM_VOCAB_TABLE]), ranking_examples=int(versions[RANKING_EXAMPLES_TABLE]))


def latest_ranking_versions(settings: Settings) -> RankingVersions:
    """The newest versions of ranking_examples and item_vocab, consistent with each other
    (the ranking table is read first: builds write the vocabulary before it)."""
    ranking = table_version(settings.table_uri(RANKING_EXAMPLES_TABLE))
    vocab = table_version(settings.table_uri(ITEM_VOCAB_TABLE))
    if ranking is None or vocab is None:
        raise FileNotFoundError(
            f"no {RANKING_EXAMPLES_TABLE} under {settings.lake_root}; run `streamrec features build --ranking` first"
        )
    return RankingVersions(item_vocab=vocab, ranking_examples=ranking)


@dataclass(frozen=True)
class RankingExamples(PaddedRows):
    """Padded (history, candidate, labels) rows of one split; row i belongs to ``user_ids[i]``."""

    ROW_ARRAYS = ("user_ids", "ts", "item_indices", "action_ids", "timestamps", "lengths", "candidates", "labels")
    BATCH_KEYS = RANKING_BATCH_KEYS

    user_ids: np.ndarray  # (N,) str
    ts: np.ndarray  # (N,) int64 epoch ms of the exposure
    item_indices: np.ndarray  # (N, max_len) int64 history, right-padded with 0
    action_ids: np.ndarray  # (N, max_len) int64, ingestion.schema.ACTION_IDS, 0 = padding
    timestamps: np.ndarray  # (N, max_len) int64 epoch ms, 0 = padding
    lengths: np.ndarray  # (N,) int64
    candidates: np.ndarray  # (N,) int64 item index of the exposed item
    labels: np.ndarray  # (N, len(tasks)) float32 0/1
    tasks: tuple[str, ...] = TASKS
    num_items: int = 0  # largest item index of the vocabulary version read
    versions: dict[str, int] = field(default_factory=dict)
    window_ms: int = 0
    valid: np.ndarray | None = None  # (N,) bool; False marks padding rows added by shard()

    def __post_init__(self) -> None:
        rows = len(self.lengths)
        for name in ("action_ids", "timestamps"):
            if getattr(self, name).shape != self.item_indices.shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {self.item_indices.shape}")
        for name in ("user_ids", "ts", "candidates", "labels", "item_indices"):
            if len(getattr(self, name)) != rows:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, expected {rows}")
        if self.labels.shape[1:] != (len(self.tasks),):
            raise ValueError(f"labels have shape {self.labels.shape}, expected (N, {len(self.tasks)})")
        if self.valid is None:
            object.__setattr__(self, "valid", np.ones(rows, dtype=bool))

    def batches(
        self, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = False
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of torch tensors keyed by RANKING_BATCH_KEYS; the last batch may be smaller."""
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        order = np.arange(len(self))
        if shuffle:
            order = np.random.default_rng([seed, epoch, 1]).permutation(len(self))
        for start in range(0, len(self), batch_size):
            rows = order[start : start + batch_size]
            yield self.batch(rows)


def read_ranking_table(
    settings: Settings, version: int, split: str | None = None, complete_only: bool = True
) -> pa.Table:
    """Rows of ranking_examples ``version`` (of ``split``; None = all), sorted by user and event
    order; with ``complete_only`` only rows whose label window closed by the watermark."""
    uri = settings.table_uri(RANKING_EXAMPLES_TABLE)
    state = ranking_state(uri, version)
    if state is None:
        raise ValueError(f"{RANKING_EXAMPLES_TABLE} version {version} has no recorded build")
    expression = None
    if split is not None:
        if split not in SPLIT_NAMES:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLIT_NAMES}")
        expression = pc.field("split").cast(pa.string()) == split
    table = DeltaTable(uri, version=version).to_pyarrow_dataset().to_table(filter=expression)
    table = table.select(RANKING_EXAMPLES_SCHEMA.names).cast(RANKING_EXAMPLES_SCHEMA)
    if complete_only:
        table = table.filter(pc.less_equal(table.column("ts"), state.watermark_ts - state.window_ms))
    order = [(name, "ascending") for name in ("user_id", "ts", "kafka_partition", "kafka_offset")]
    return table.sort_by(order)


def load_ranking_examples(
    settings: Settings,
    split: str,
    versions: RankingVersions | None = None,
    max_len: int | None = None,
    complete_only: bool = True,
) -> RankingExamples:
    """Examples of ``split`` ("train", "validation", "test") at ``versions`` (default latest),
    histories cut to their last ``max_len`` events (default: as stored)."""
    versions = versions or latest_ranking_versions(settings)
    state = ranking_state(settings.table_uri(RANKING_EXAMPLES_TABLE), versions.ranking_examples)
    if state is None:
        raise ValueError(f"{RANKING_EXAMPLES_TABLE} version {versions.ranking_examples} has no recorded build")
    max_len = max_len or state.max_len
    table = read_ranking_table(settings, versions.ranking_examples, split, complete_only)
    num_items = _num_items(settings, versions.item_vocab)
    candidates = _numpy(table.column("item_index"))
    lengths = pc.list_value_length(table.column("item_indices")).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = _numpy(pc.list_flatten(table.column("item_indices")))
    if (len(items) and int(items.max()) > num_items) or (len(candidates) and int(candidates.max()) > num_items):
        raise ValueError(
            f"{RANKING_EXAMPLES_TABLE} version {versions.ranking_examples} uses item indices above {num_items}, "
            f"the largest in item_vocab version {versions.item_vocab}; pass versions from latest_ranking_versions()"
        )
    actions = pc.list_flatten(table.column("actions"))
    action_ids = _numpy(pc.index_in(actions, value_set=pa.array(ACTIONS))) + 1
    timestamps = _numpy(pc.list_flatten(table.column("timestamps")))
    starts = np.maximum(offsets[:-1], offsets[1:] - max_len)
    ends = offsets[1:]
    padded = gather([items, action_ids, timestamps], starts, ends, max_len)
    labels = np.stack([table.column(name).to_numpy(zero_copy_only=False) for name in LABEL_COLUMNS], axis=1)
    return RankingExamples(
        user_ids=table.column("user_id").to_numpy(zero_copy_only=False).astype(str),
        ts=_numpy(table.column("ts")),
        item_indices=padded[0],
        action_ids=padded[1],
        timestamps=padded[2],
        lengths=(ends - starts).astype(np.int64),
        candidates=candidates,
        labels=labels.astype(np.float32).reshape(len(table), len(LABEL_COLUMNS)),
        num_items=num_items,
        versions=versions.as_dict(),
        window_ms=state.window_ms,
    )


def _numpy(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)


def _num_items(settings: Settings, version: int) -> int:
    table = DeltaTable(settings.table_uri(ITEM_VOCAB_TABLE), version=version).to_pyarrow_table(columns=["item_index"])
    return int(pc.max(table.column("item_index")).as_py() or 0)

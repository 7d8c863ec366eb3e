"""The training reader: pinned Delta versions of the feature tables -> SequenceExamples.

Reads with deltalake and pyarrow only (no Spark), so every Ray Train worker can call
``load_examples`` itself and then take its shard::

    versions = latest_versions(settings)            # on the driver; recorded by the run
    examples = load_examples(settings, "train", versions)   # in each worker
    mine = examples.shard(rank, world_size, seed=seed, epoch=epoch, shuffle=True)

The same versions and arguments always give the same examples, rows sorted by user_id.
Splits are documented in ``features.splits``; they are taken from the stored window of
each user (the last ``features_max_len`` events).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from features.examples import BATCH_KEYS, SequenceExamples
from features.splits import FlatSequences, gather, select
from features.tables import ITEM_VOCAB_TABLE, USER_SEQUENCES_TABLE
from infra.lake import table_version
from infra.settings import Settings
from ingestion.schema import ACTIONS

if TYPE_CHECKING:
    import ray.data


@dataclass(frozen=True)
class FeatureVersions:
    """The Delta versions of the feature tables a reader reads (record them with the run)."""

    item_vocab: int
    user_sequences: int

    def as_dict(self) -> dict[str, int]:
        """{table name: version}: the one shape versions are saved in (runs, jobs, model.json)."""
        return {ITEM_VOCAB_TABLE: self.item_vocab, USER_SEQUENCES_TABLE: self.user_sequences}

    @classmethod
    def from_dict(cls, versions: dict[str, int]) -> FeatureVersions:
        """The inverse of ``as_dict``."""
        return cls(item_vocab=int(versions[ITEM_VOCAB_TABLE]), user_sequences=int(versions[USER_SEQUENCES_TABLE]))


def latest_versions(settings: Settings) -> FeatureVersions:
    """The newest versions of item_vocab and user_sequences, consistent with each other."""
    # Builds write the vocabulary before the sequences, so reading the sequences' version
    # first guarantees the vocabulary version covers every index the sequences use.
    sequences = table_version(settings.table_uri(USER_SEQUENCES_TABLE))
    vocab = table_version(settings.table_uri(ITEM_VOCAB_TABLE))
    if sequences is None or vocab is None:
        raise FileNotFoundError(f"no feature tables under {settings.lake_root}; run `streamrec features build` first")
    return FeatureVersions(item_vocab=vocab, user_sequences=sequences)


def load_examples(
    settings: Settings,
    split: str,
    versions: FeatureVersions | None = None,
    max_len: int | None = None,
    split_mode: str = "leave_last_out",
    split_ts: int | None = None,
) -> SequenceExamples:
    """Examples of ``split`` ("train", "validation", "test") at ``versions`` (default latest).

    ``max_len`` (default ``settings.features.max_len``) is the history length of the
    examples; ``split_mode`` is "leave_last_out" or "time" (then ``split_ts``, epoch ms, is
    required). ``num_items`` is the largest vocabulary index at the vocabulary version.
    """
    versions = versions or latest_versions(settings)
    max_len = max_len or settings.features.max_len
    user_ids, flat = read_sequences(settings, versions.user_sequences)
    num_items = _num_items(settings, versions.item_vocab)
    if len(flat.items) and int(flat.items.max()) > num_items:
        raise ValueError(
            f"user_sequences version {versions.user_sequences} uses item indices above {num_items}, "
            f"the largest in item_vocab version {versions.item_vocab}; pass versions from latest_versions()"
        )
    chosen = select(flat, split, max_len, split_mode, split_ts)
    columns = [flat.items, flat.action_ids, flat.timestamps]
    items, action_ids, timestamps = gather(columns, chosen.starts, chosen.ends, max_len)
    return SequenceExamples(
        user_ids=user_ids[chosen.rows],
        item_indices=items,
        action_ids=action_ids,
        timestamps=timestamps,
        lengths=(chosen.ends - chosen.starts).astype(np.int64),
        targets=chosen.targets.astype(np.int64),
        num_items=num_items,
        versions=versions.as_dict(),
    )


def read_sequences(settings: Settings, version: int) -> tuple[np.ndarray, FlatSequences]:
    """User ids (sorted) and their flattened sequences at user_sequences ``version``."""
    table = DeltaTable(settings.table_uri(USER_SEQUENCES_TABLE), version=version).to_pyarrow_table()
    return flatten_sequences(table, f"user_sequences version {version}")


def flatten_sequences(table: pa.Table, source: str = "user_sequences") -> tuple[np.ndarray, FlatSequences]:
    """User ids (sorted) and their flattened sequences of user_sequences rows ``table``
    (``source`` names them in errors)."""
    order = pc.sort_indices(table.column("user_id"))
    if not np.array_equal(order.to_numpy(), np.arange(len(table))):  # full builds write sorted rows
        table = table.take(order)
    lengths = pc.list_value_length(table.column("item_indices")).to_numpy(zero_copy_only=False)
    for column in ("actions", "timestamps"):
        if not np.array_equal(pc.list_value_length(table.column(column)).to_numpy(zero_copy_only=False), lengths):
            raise ValueError(f"{source}: {column} and item_indices differ in length")
    actions = pc.list_flatten(table.column("actions"))
    action_ids = pc.index_in(actions, value_set=pa.array(ACTIONS))
    if action_ids.null_count:
        unknown = pc.unique(pc.filter(actions, pc.is_null(action_ids))).to_pylist()
        raise ValueError(f"{source} holds unknown actions {unknown}")
    flat = FlatSequences(
        offsets=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]),
        items=_numpy(pc.list_flatten(table.column("item_indices"))),
        action_ids=_numpy(action_ids) + 1,  # ACTION_IDS start at 1
        timestamps=_numpy(pc.list_flatten(table.column("timestamps"))),
    )
    return table.column("user_id").to_numpy(zero_copy_only=False).astype(str), flat


def _numpy(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)


def _num_items(settings: Settings, version: int) -> int:
    table = DeltaTable(settings.table_uri(ITEM_VOCAB_TABLE), version=version).to_pyarrow_table(columns=["item_index"])
    largest = pc.max(table.column("item_index")).as_py()
    return int(largest or 0)


def to_ray_dataset(examples: SequenceExamples) -> ray.data.Dataset:
    """The examples as a Ray Dataset: one row per example, columns user_id and BATCH_KEYS.

    2-D arrays (item_indices, action_ids, timestamps) become tensor columns, so
    ``ds.select_columns(list(BATCH_KEYS)).iter_torch_batches(...)`` yields the same
    (batch, max_len) tensors as ``SequenceExamples.batches`` (user_id is a string column).
    """
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    columns: dict[str, pa.Array] = {"user_id": pa.array(examples.user_ids, pa.string())}
    for key in BATCH_KEYS:
        values = getattr(examples, key)
        columns[key] = ArrowTensorArray.from_numpy(values) if values.ndim == 2 else pa.array(values)
    return ray.data.from_arrow(pa.table(columns))

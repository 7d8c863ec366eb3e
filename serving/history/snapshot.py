"""Where a history's Delta snapshot ends on the topic, and the snapshot itself.

The sequences version records the ``silver/events`` version S it reflects
(``features.tables.recorded_state``); silver@S records, as its ingestion app transaction, the
``bronze/events`` version B it reflects; bronze records the Kafka partition and offset of
every valid record, and the ingest stream reads each partition in order, so the first offset
of partition p *not* in the snapshot is ``max(kafka_offset of p in bronze@B) + 1`` (0 when
bronze@B has none of p). The event ids silver@S holds are kept (as hashes) so that re-sent
events the tail reads count as duplicates, as silver would drop them.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from features.tables import ITEM_VOCAB_TABLE, USER_SEQUENCES_SCHEMA, USER_SEQUENCES_TABLE, recorded_state
from infra.settings import Settings
from ingestion.lake_writer import SILVER_APP_ID
from ingestion.schema import ACTIONS, BRONZE_TABLE, SILVER_TABLE

_log = logging.getLogger(__name__)

_VOCAB_COLUMNS = pa.schema([("item_id", pa.string()), ("item_index", pa.int64())])


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """One action of a user."""

    item_id: str
    action: str  # one of ingestion.schema.ACTIONS
    ts: int  # epoch ms


class UserState:
    """A user's held events (the last maxlen) and partition; the store's value per user.

    ``appended`` and ``reordered`` count the events the tail put at the end of ``events`` and
    before it since the bootstrap: a reader that followed the events up to some count can take
    the rest as the last ``appended`` - count held events while ``reordered`` is unchanged
    (``serving.user_state``)."""

    __slots__ = ("appended", "events", "partition", "reordered")

    def __init__(self, events: deque[HistoryEvent], partition: int | None) -> None:
        self.events = events
        self.partition = partition
        self.appended = 0
        self.reordered = 0


@dataclass(frozen=True)
class Ownership:
    """The partitions a history owns: ``partitions`` (None: all, including ones added later) or,
    with ``shard=(index, count)``, every partition p with ``p % count == index``."""

    partitions: frozenset[int] | None = None
    shard: tuple[int, int] | None = None

    def owns(self, partition: int) -> bool:
        if self.shard is not None:
            return partition % self.shard[1] == self.shard[0]
        return self.partitions is None or partition in self.partitions

    def mask(self, partitions: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """For each partition value, whether it is owned."""
        values = np.asarray(partitions.to_numpy(zero_copy_only=False), dtype=np.int64)
        if self.shard is not None:
            return np.asarray(values % self.shard[1] == self.shard[0])
        if self.partitions is not None:
            return np.isin(values, np.fromiter(self.partitions, np.int64, len(self.partitions)))
        return np.ones(len(values), dtype=bool)


@dataclass(frozen=True)
class Bootstrap:
    """Where the snapshot came from and where the tail starts."""

    user_sequences_version: int
    silver_version: int
    bronze_version: int
    item_vocab_version: int
    start_offsets: dict[int, int]  # partition -> first offset to read
    users: int


@dataclass
class Snapshot:
    bootstrap: Bootstrap
    users: dict[str, UserState]
    silver_ids: np.ndarray  # hashes of the event_ids silver@S holds (owned partitions)
    bronze_next: dict[int, int]  # every partition of bronze@B -> max offset + 1
    snapshot_max_len: int


def load_snapshot(
    settings: Settings, user_sequences_version: int, item_vocab_version: int, max_len: int, owned: Ownership
) -> Snapshot:
    """Load the owned users of user_sequences at its version (item ids from item_vocab at its
    version) and work out where that snapshot ends on the topic."""
    sequences_uri = settings.table_uri(USER_SEQUENCES_TABLE)
    if not DeltaTable.is_deltatable(sequences_uri):
        raise FileNotFoundError(f"no {USER_SEQUENCES_TABLE} table at {sequences_uri}; run `streamrec features build`")
    state = recorded_state(sequences_uri, user_sequences_version)
    if state is None:
        raise ValueError(
            f"{USER_SEQUENCES_TABLE} version {user_sequences_version} records no silver version"
            " (it was not written by `streamrec features build`): cannot tell where the snapshot ends"
        )
    silver_version, snapshot_max_len = state
    if snapshot_max_len < max_len:
        _log.warning(
            "%s version %d keeps %d events per user, fewer than max_len %d: histories start shorter",
            USER_SEQUENCES_TABLE,
            user_sequences_version,
            snapshot_max_len,
            max_len,
        )
    silver = DeltaTable(settings.table_uri(SILVER_TABLE), version=silver_version)
    bronze_version = silver.transaction_version(SILVER_APP_ID)
    if bronze_version is None:
        raise ValueError(
            f"{SILVER_TABLE} version {silver_version} records no bronze version (app transaction"
            f" {SILVER_APP_ID!r}; silver was not written by ingestion): cannot tell where the snapshot ends"
        )
    bronze_next = _bronze_next_offsets(settings.table_uri(BRONZE_TABLE), bronze_version)
    start_offsets = {p: offset for p, offset in bronze_next.items() if owned.owns(p)}
    for partition in owned.partitions or ():
        start_offsets.setdefault(partition, 0)
    silver_ids, partition_of_user = _silver_state(silver, owned)
    users = _snapshot_users(
        settings, sequences_uri, partition_of_user, user_sequences_version, item_vocab_version, max_len, owned
    )
    bootstrap = Bootstrap(
        user_sequences_version=user_sequences_version,
        silver_version=silver_version,
        bronze_version=bronze_version,
        item_vocab_version=item_vocab_version,
        start_offsets=dict(sorted(start_offsets.items())),
        users=len(users),
    )
    return Snapshot(bootstrap, users, silver_ids, bronze_next, snapshot_max_len)


def _silver_state(silver: DeltaTable, owned: Ownership) -> tuple[np.ndarray, dict[str, int]]:
    """Hashes of silver's event_ids in owned partitions, and each user's partition
    (the largest one, when a recreated topic moved a user)."""
    hashes: list[np.ndarray] = []
    user_partitions: list[pa.Table] = []
    for batch in silver.to_pyarrow_dataset().to_batches(columns=["event_id", "user_id", "kafka_partition"]):
        if not batch.num_rows:
            continue
        mask = owned.mask(batch.column("kafka_partition"))
        if not mask.all():
            batch = batch.filter(pa.array(mask))
        hashes.append(hash_ids(batch.column("event_id")))
        table = pa.Table.from_batches([batch.select(["user_id", "kafka_partition"])])
        user_partitions.append(_max_by(table, "user_id", "kafka_partition"))
    if not user_partitions:
        return np.empty(0, np.uint64), {}
    partitions = _max_by(pa.concat_tables(user_partitions), "user_id", "kafka_partition")
    users = partitions.column("user_id").to_pylist()
    return np.concatenate(hashes), dict(zip(users, partitions.column("kafka_partition").to_pylist(), strict=True))


def _snapshot_users(
    settings: Settings,
    sequences_uri: str,
    partition_of_user: dict[str, int],
    version: int,
    item_vocab_version: int,
    max_len: int,
    owned: Ownership,
) -> dict[str, UserState]:
    """The owned users of user_sequences, with item ids from the pinned vocabulary."""
    table = DeltaTable(sequences_uri, version=version).to_pyarrow_table(columns=USER_SEQUENCES_SCHEMA.names)
    table = table.cast(USER_SEQUENCES_SCHEMA)
    if owned.partitions is not None or owned.shard is not None:  # a shard: only its users
        owned = pa.array(list(partition_of_user), pa.string())
        table = table.filter(pc.is_in(table.column("user_id"), value_set=owned))
    lengths = pc.list_value_length(table.column("item_indices")).to_numpy(zero_copy_only=False)
    for column in ("actions", "timestamps"):
        other = pc.list_value_length(table.column(column)).to_numpy(zero_copy_only=False)
        if not np.array_equal(other, lengths):
            raise ValueError(f"{USER_SEQUENCES_TABLE} version {version}: {column} and item_indices differ in length")

    vocab = DeltaTable(settings.table_uri(ITEM_VOCAB_TABLE), version=item_vocab_version)
    vocab_table = vocab.to_pyarrow_table(columns=["item_id", "item_index"]).cast(_VOCAB_COLUMNS)
    indices = pc.list_flatten(table.column("item_indices"))
    positions = pc.index_in(indices, value_set=vocab_table.column("item_index").combine_chunks())
    if positions.null_count:
        missing = pc.unique(pc.filter(indices, pc.is_null(positions))).to_pylist()[:10]
        raise ValueError(
            f"{USER_SEQUENCES_TABLE} version {version} uses item indices {missing} that {ITEM_VOCAB_TABLE}"
            f" version {item_vocab_version} does not hold; pin versions from features.reader.latest_versions"
        )
    actions = pc.list_flatten(table.column("actions"))
    action_codes = pc.index_in(actions, value_set=pa.array(ACTIONS))
    if action_codes.null_count:
        unknown = pc.unique(pc.filter(actions, pc.is_null(action_codes))).to_pylist()
        raise ValueError(f"{USER_SEQUENCES_TABLE} version {version} holds unknown actions {unknown}")

    # Shared str objects: one per item and action, however often they occur.
    item_ids = np.asarray(vocab_table.column("item_id").to_pylist(), dtype=object)
    items = item_ids[_int_array(positions)].tolist() if len(item_ids) else []
    action_names = np.asarray(ACTIONS, dtype=object)[_int_array(action_codes)].tolist()
    timestamps = pc.list_flatten(table.column("timestamps")).to_pylist()
    events = list(map(HistoryEvent, items, action_names, timestamps))

    users: dict[str, UserState] = {}
    ends = np.cumsum(lengths, dtype=np.int64).tolist()
    begin = 0
    for user_id, end in zip(table.column("user_id").to_pylist(), ends, strict=True):
        # deque(maxlen) keeps the last max_len when the snapshot holds more.
        users[user_id] = UserState(deque(events[begin:end], max_len), partition_of_user.get(user_id))
        begin = end
    return users


def hash_ids(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit hashes of event ids (stable across processes)."""
    from pandas.util import hash_array

    values = np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object)
    return np.asarray(hash_array(values), dtype=np.uint64)


def _bronze_next_offsets(bronze_uri: str, version: int) -> dict[int, int]:
    """{partition: max kafka_offset + 1} over bronze at ``version``."""
    maxima: list[pa.Table] = []
    dataset = DeltaTable(bronze_uri, version=version).to_pyarrow_dataset()
    for batch in dataset.to_batches(columns=["kafka_partition", "kafka_offset"]):
        if batch.num_rows:
            maxima.append(_max_by(pa.Table.from_batches([batch]), "kafka_partition", "kafka_offset"))
    if not maxima:
        return {}
    table = _max_by(pa.concat_tables(maxima), "kafka_partition", "kafka_offset")
    pairs = zip(table.column("kafka_partition").to_pylist(), table.column("kafka_offset").to_pylist(), strict=True)
    return dict(sorted((int(p), int(offset) + 1) for p, offset in pairs))


def _max_by(table: pa.Table, key: str, value: str) -> pa.Table:
    """Columns ``key`` and ``value``: the largest ``value`` per ``key``."""
    grouped = table.group_by(key, use_threads=False).aggregate([(value, "max")])
    return grouped.rename_columns([value if name == f"{value}_max" else name for name in grouped.column_names])


def _int_array(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)

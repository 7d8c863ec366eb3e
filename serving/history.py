"""The online user history of the serving layer: a Delta snapshot, then a live Kafka tail.

Each user's last ``max_len`` actions are kept in memory. ``OnlineHistory.bootstrap`` loads
``features/user_sequences`` at a pinned version (item indices turned back into item ids with
``features/item_vocab`` at its pinned version) and works out exactly where that snapshot
ends on the topic; ``start`` then tails the topic from there on a daemon thread, so no event
is counted twice or missed:

* the sequences version records the ``silver/events`` version S it reflects
  (``features.tables.recorded_state``); silver@S records, as its ingestion app transaction,
  the ``bronze/events`` version B it reflects;
* bronze records the Kafka partition and offset of every valid record, and the ingest stream
  reads each partition in order, so the first offset of partition p *not* in the snapshot is
  ``max(kafka_offset of p in bronze@B) + 1`` (0 when bronze@B has none of p);
* records from there on are validated exactly as ingestion validates them
  (``ingestion.validation.validate_records``): invalid ones are counted and skipped, and so
  are re-sent events (an event_id silver@S holds, or one already applied since bootstrap),
  which silver would drop too.

Event order is that of ``features/user_sequences``: by ts, then Kafka order (partition,
offset). A user's records share one partition (the topic is keyed by user_id) and arrive in
offset order, so a tailed event goes after every held event with a ts <= its own (after all
snapshot events of equal ts too); an event older than a full window falls outside the last
``max_len`` and is not kept, as a recompute would not keep it.

Topic changes: a partition that ends before the history's next offset means the topic was
recreated (the local broker keeps topics in memory only): that is logged and the partition
is read again from its beginning (re-sent events count as duplicates). A recreated topic
that already holds more records than the old position cannot be told from the old one.
Owned partitions added to the topic are found within a few seconds and read from offset 0.

Threading: one daemon thread owns the Kafka consumer and is the only writer; ``get``,
``status`` and ``wait_for`` may be called from any thread (one lock guards the histories and
offsets; ``get`` copies a user's events under it, so a returned ``UserHistory`` is
consistent with its ``applied_offset``). The thread never dies silently: errors are logged,
kept in ``status()["last_error"]`` and retried with backoff.

Memory: at most ``max_len`` events per user, plus 8 bytes per known event_id (event ids are
kept as 64-bit hashes, so two distinct ids colliding, with odds about n^2 / 2^65 for n ids,
would drop the later event as a duplicate).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from features.tables import ITEM_VOCAB_TABLE, USER_SEQUENCES_SCHEMA, USER_SEQUENCES_TABLE, recorded_state
from infra.errors import StreamrecError
from infra.settings import Settings
from ingestion.lake_writer import SILVER_APP_ID
from ingestion.schema import ACTIONS, BRONZE_TABLE, SILVER_TABLE
from ingestion.validation import ValidationLimits, validate_records

if TYPE_CHECKING:
    from kafka import KafkaConsumer

_log = logging.getLogger(__name__)

_POLL_TIMEOUT_MS = 100  # freshness: a record waits at most about this long in an idle poll
_FETCH_MAX_WAIT_MS = 100  # how long the broker may hold a fetch that has nothing new
_MAX_POLL_RECORDS = 20_000
_METADATA_EVERY_S = 5.0  # how often the tail looks for added partitions or a vanished topic
_REQUEST_TIMEOUT_MS = 15_000
_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 30.0
_VOCAB_COLUMNS = pa.schema([("item_id", pa.string()), ("item_index", pa.int64())])
_ACTION_OF = {action: action for action in ACTIONS}  # one str object per action


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """One action of a user."""

    item_id: str
    action: str  # one of ingestion.schema.ACTIONS
    ts: int  # epoch ms


@dataclass(frozen=True)
class UserHistory:
    """A user's last actions and the Kafka position they reflect (serving's lineage)."""

    user_id: str
    events: tuple[HistoryEvent, ...]  # oldest first, at most max_len, by ts then Kafka order
    partition: int | None  # the user's Kafka partition; None if unknown
    applied_offset: int | None  # last offset of that partition applied (None: nothing there yet)


@dataclass(frozen=True)
class Bootstrap:
    """Where the snapshot came from and where the tail starts."""

    user_sequences_version: int
    silver_version: int
    bronze_version: int
    item_vocab_version: int
    start_offsets: dict[int, int]  # partition -> first offset to read
    users: int


def partition_of(user_id: str, num_partitions: int) -> int:
    """The partition the producers' default partitioner (Kafka's murmur2) gives ``user_id``.

    For routing a user with no history yet to the shard that owns their partition.
    """
    from kafka.partitioner.default import murmur2

    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % num_partitions


class HistoryError(StreamrecError):
    """The online history cannot follow its topic as it is (it keeps retrying)."""


class _Resync(Exception):
    """The tail must set itself up again (partitions changed, topic recreated); not an error."""


class _UserState:
    __slots__ = ("events", "partition")

    def __init__(self, events: deque[HistoryEvent], partition: int | None) -> None:
        self.events = events
        self.partition = partition


class _SeenIds:
    """The event_ids already counted (silver@S, then every applied event), as 64-bit hashes.

    Only the tail thread uses it. Recent ids sit in a small set; every ``_RECENT_MAX`` of
    them become a sorted array, and arrays of similar size are merged (a log-structured
    merge), so memory stays about 8 bytes per id and each lookup is a few binary searches.
    """

    _RECENT_MAX = 1 << 16

    def __init__(self, hashes: np.ndarray) -> None:
        self._levels: list[np.ndarray] = [_sorted_unique(hashes)] if len(hashes) else []  # largest first
        self._recent: set[int] = set()

    def admit(self, hashes: np.ndarray) -> np.ndarray:
        """For each hash in order, whether it is new (then it is known from now on)."""
        fresh = np.ones(len(hashes), dtype=bool)
        for level in self._levels:
            at = np.minimum(np.searchsorted(level, hashes), len(level) - 1)
            fresh &= level[at] != hashes
        for position in np.flatnonzero(fresh):
            value = int(hashes[position])
            if value in self._recent:
                fresh[position] = False
            else:
                self._recent.add(value)
        if len(self._recent) >= self._RECENT_MAX:
            self._levels.append(np.sort(np.fromiter(self._recent, np.uint64, len(self._recent))))
            self._recent.clear()
            while len(self._levels) > 1 and len(self._levels[-2]) < 2 * len(self._levels[-1]):
                newer, older = self._levels.pop(), self._levels.pop()
                self._levels.append(np.union1d(older, newer))
        return fresh


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    ordered = np.sort(values)
    return ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])] if len(ordered) else ordered


def _hash_ids(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit hashes of event ids (stable across processes)."""
    from pandas.util import hash_array

    values = np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object)
    return np.asarray(hash_array(values), dtype=np.uint64)


@dataclass
class _Snapshot:
    bootstrap: Bootstrap
    users: dict[str, _UserState]
    silver_ids: np.ndarray  # hashes of the event_ids silver@S holds (owned partitions)
    bronze_next: dict[int, int]  # every partition of bronze@B -> max offset + 1
    snapshot_max_len: int


class OnlineHistory:
    """Every owned user's last ``max_len`` actions: a pinned feature snapshot plus a live tail.

    ``partitions``: the partitions this shard owns (None: all of the topic's, including ones
    added later). ``shard=(index, count)`` instead owns every partition p with
    ``p % count == index`` (``settings.serve_history_shards``), also ones added later.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        user_sequences_version: int,
        item_vocab_version: int,
        max_len: int,
        partitions: Collection[int] | None = None,
        shard: tuple[int, int] | None = None,
    ) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, not {max_len}")
        if partitions is not None and shard is not None:
            raise ValueError("give partitions or shard, not both")
        if shard is not None and not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard must be (index, count) with 0 <= index < count, not {shard}")
        self.settings = settings
        self.topic = settings.topic
        self.user_sequences_version = user_sequences_version
        self.item_vocab_version = item_vocab_version
        self.max_len = max_len
        self._partitions = frozenset(partitions) if partitions is not None else None
        self._shard = shard
        self._limits = ValidationLimits.from_settings(settings)

        self._lock = threading.Lock()
        self._advanced = threading.Condition(self._lock)
        self._bootstrap_lock = threading.Lock()
        self._bootstrap: Bootstrap | None = None
        self._snapshot_max_len: int | None = None
        self._users: dict[str, _UserState] = {}
        self._seen = _SeenIds(np.empty(0, np.uint64))
        self._bronze_next: dict[int, int] = {}
        self._next: dict[int, int] = {}  # partition -> next offset to apply
        self._high: dict[int, int | None] = {}  # partition -> high watermark last seen
        self._assigned: list[int] = []
        self._events_applied = 0
        self._invalid = 0
        self._duplicates = 0
        self._recreated = 0
        self._errors = 0
        self._last_error: str | None = None
        self._tailing = False

        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff_s = _BACKOFF_FIRST_S

    # --- public API -----------------------------------------------------------------

    def owns(self, partition: int) -> bool:
        """Whether this shard owns ``partition``."""
        if self._shard is not None:
            return partition % self._shard[1] == self._shard[0]
        return self._partitions is None or partition in self._partitions

    def bootstrap(self) -> Bootstrap:
        """Load the snapshot (item indices -> item ids via item_vocab at its version) and
        compute where the tail starts. Done once; later calls return the same answer."""
        with self._bootstrap_lock:
            if self._bootstrap is not None:
                return self._bootstrap
            started = time.monotonic()
            snapshot = self._load_snapshot()
            with self._lock:
                self._users = snapshot.users
                self._bronze_next = snapshot.bronze_next
                self._next = dict(snapshot.bootstrap.start_offsets)
                self._snapshot_max_len = snapshot.snapshot_max_len
                self._seen = _SeenIds(snapshot.silver_ids)
                self._bootstrap = snapshot.bootstrap
            _log.info(
                "online history of %s: %d users from %s version %d (silver %d, bronze %d) in %.1fs; start offsets %s",
                self.topic,
                snapshot.bootstrap.users,
                USER_SEQUENCES_TABLE,
                self.user_sequences_version,
                snapshot.bootstrap.silver_version,
                snapshot.bootstrap.bronze_version,
                time.monotonic() - started,
                snapshot.bootstrap.start_offsets,
            )
            return snapshot.bootstrap

    def start(self) -> None:
        """Bootstrap if not done, then tail the owned partitions on a daemon thread."""
        self.bootstrap()
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"online-history-{self.topic}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the tail (waits for its thread to close the consumer)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                _log.warning("the online history tail of %s did not stop within %.0fs", self.topic, timeout_s)

    def __enter__(self) -> OnlineHistory:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def get(self, user_id: str) -> UserHistory | None:
        """The user's history now (thread-safe); None for a user never seen."""
        with self._lock:
            state = self._users.get(user_id)
            if state is None:
                return None
            events = tuple(state.events)
            partition = state.partition
            next_offset = self._next.get(partition) if partition is not None else None
        applied = next_offset - 1 if next_offset else None
        return UserHistory(user_id, events, partition, applied)

    def status(self) -> dict[str, Any]:
        """A JSON-able report: bootstrap fields, per partition {next_offset, high_watermark,
        lag}, users, counters, ``running`` (the thread lives), ``tailing`` (it is connected
        and polling now) and ``last_error`` (the latest failure; kept after a recovery)."""
        with self._lock:
            bootstrap = asdict(self._bootstrap) if self._bootstrap is not None else None
            partitions = {}
            for partition in sorted(self._next):
                if not self.owns(partition):
                    continue
                high = self._high.get(partition)
                next_offset = self._next[partition]
                partitions[partition] = {
                    "next_offset": next_offset,
                    "high_watermark": high,
                    "lag": max(high - next_offset, 0) if high is not None else None,
                }
            report: dict[str, Any] = {
                "topic": self.topic,
                "bootstrapped": bootstrap is not None,
                **(
                    bootstrap
                    or {
                        "user_sequences_version": self.user_sequences_version,
                        "silver_version": None,
                        "bronze_version": None,
                        "item_vocab_version": self.item_vocab_version,
                        "start_offsets": {},
                    }
                ),
                "max_len": self.max_len,
                "snapshot_max_len": self._snapshot_max_len,
                "partitions": partitions,
                "users": len(self._users),
                "events_applied": self._events_applied,
                "invalid": self._invalid,
                "duplicates": self._duplicates,
                "topic_recreations": self._recreated,
                "running": self._thread is not None and self._thread.is_alive(),
                "tailing": self._tailing,
                "errors": self._errors,
                "last_error": self._last_error,
            }
        return report

    def wait_for(self, offsets: dict[int, int], timeout_s: float) -> bool:
        """True once every given partition's next offset is >= the given offset; False after
        ``timeout_s`` seconds otherwise."""
        with self._advanced:
            return self._advanced.wait_for(
                lambda: all(self._next.get(partition, 0) >= offset for partition, offset in offsets.items()),
                timeout=timeout_s,
            )

    # --- the snapshot ---------------------------------------------------------------

    def _load_snapshot(self) -> _Snapshot:
        settings = self.settings
        sequences_uri = settings.table_uri(USER_SEQUENCES_TABLE)
        if not DeltaTable.is_deltatable(sequences_uri):
            raise FileNotFoundError(
                f"no {USER_SEQUENCES_TABLE} table at {sequences_uri}; run `streamrec features build`"
            )
        state = recorded_state(sequences_uri, self.user_sequences_version)
        if state is None:
            raise ValueError(
                f"{USER_SEQUENCES_TABLE} version {self.user_sequences_version} records no silver version"
                " (it was not written by `streamrec features build`): cannot tell where the snapshot ends"
            )
        silver_version, snapshot_max_len = state
        if snapshot_max_len < self.max_len:
            _log.warning(
                "%s version %d keeps %d events per user, fewer than max_len %d: histories start shorter",
                USER_SEQUENCES_TABLE,
                self.user_sequences_version,
                snapshot_max_len,
                self.max_len,
            )
        silver = DeltaTable(settings.table_uri(SILVER_TABLE), version=silver_version)
        bronze_version = silver.transaction_version(SILVER_APP_ID)
        if bronze_version is None:
            raise ValueError(
                f"{SILVER_TABLE} version {silver_version} records no bronze version (app transaction"
                f" {SILVER_APP_ID!r}; silver was not written by ingestion): cannot tell where the snapshot ends"
            )
        bronze_next = _bronze_next_offsets(settings.table_uri(BRONZE_TABLE), bronze_version)
        start_offsets = {p: offset for p, offset in bronze_next.items() if self.owns(p)}
        for partition in self._partitions or ():
            start_offsets.setdefault(partition, 0)
        silver_ids, partition_of_user = self._silver_state(silver)
        users = self._snapshot_users(sequences_uri, partition_of_user)
        bootstrap = Bootstrap(
            user_sequences_version=self.user_sequences_version,
            silver_version=silver_version,
            bronze_version=bronze_version,
            item_vocab_version=self.item_vocab_version,
            start_offsets=dict(sorted(start_offsets.items())),
            users=len(users),
        )
        return _Snapshot(bootstrap, users, silver_ids, bronze_next, snapshot_max_len)

    def _owned_mask(self, partitions: pa.Array | pa.ChunkedArray) -> np.ndarray:
        values = np.asarray(partitions.to_numpy(zero_copy_only=False), dtype=np.int64)
        if self._shard is not None:
            return np.asarray(values % self._shard[1] == self._shard[0])
        if self._partitions is not None:
            return np.isin(values, np.fromiter(self._partitions, np.int64, len(self._partitions)))
        return np.ones(len(values), dtype=bool)

    def _silver_state(self, silver: DeltaTable) -> tuple[np.ndarray, dict[str, int]]:
        """Hashes of silver's event_ids in owned partitions, and each user's partition
        (the largest one, when a recreated topic moved a user)."""
        hashes: list[np.ndarray] = []
        user_partitions: list[pa.Table] = []
        for batch in silver.to_pyarrow_dataset().to_batches(columns=["event_id", "user_id", "kafka_partition"]):
            if not batch.num_rows:
                continue
            owned = self._owned_mask(batch.column("kafka_partition"))
            if not owned.all():
                batch = batch.filter(pa.array(owned))
            hashes.append(_hash_ids(batch.column("event_id")))
            table = pa.Table.from_batches([batch.select(["user_id", "kafka_partition"])])
            user_partitions.append(_max_by(table, "user_id", "kafka_partition"))
        if not user_partitions:
            return np.empty(0, np.uint64), {}
        partitions = _max_by(pa.concat_tables(user_partitions), "user_id", "kafka_partition")
        users = partitions.column("user_id").to_pylist()
        return np.concatenate(hashes), dict(zip(users, partitions.column("kafka_partition").to_pylist(), strict=True))

    def _snapshot_users(self, sequences_uri: str, partition_of_user: dict[str, int]) -> dict[str, _UserState]:
        """The owned users of user_sequences, with item ids from the pinned vocabulary."""
        version = self.user_sequences_version
        table = DeltaTable(sequences_uri, version=version).to_pyarrow_table(columns=USER_SEQUENCES_SCHEMA.names)
        table = table.cast(USER_SEQUENCES_SCHEMA)
        if self._partitions is not None or self._shard is not None:  # a shard: only its users
            owned = pa.array(list(partition_of_user), pa.string())
            table = table.filter(pc.is_in(table.column("user_id"), value_set=owned))
        lengths = pc.list_value_length(table.column("item_indices")).to_numpy(zero_copy_only=False)
        for column in ("actions", "timestamps"):
            other = pc.list_value_length(table.column(column)).to_numpy(zero_copy_only=False)
            if not np.array_equal(other, lengths):
                raise ValueError(
                    f"{USER_SEQUENCES_TABLE} version {version}: {column} and item_indices differ in length"
                )

        vocab = DeltaTable(self.settings.table_uri(ITEM_VOCAB_TABLE), version=self.item_vocab_version)
        vocab_table = vocab.to_pyarrow_table(columns=["item_id", "item_index"]).cast(_VOCAB_COLUMNS)
        indices = pc.list_flatten(table.column("item_indices"))
        positions = pc.index_in(indices, value_set=vocab_table.column("item_index").combine_chunks())
        if positions.null_count:
            missing = pc.unique(pc.filter(indices, pc.is_null(positions))).to_pylist()[:10]
            raise ValueError(
                f"{USER_SEQUENCES_TABLE} version {version} uses item indices {missing} that {ITEM_VOCAB_TABLE}"
                f" version {self.item_vocab_version} does not hold; pin versions from features.reader.latest_versions"
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

        users: dict[str, _UserState] = {}
        ends = np.cumsum(lengths, dtype=np.int64).tolist()
        begin = 0
        for user_id, end in zip(table.column("user_id").to_pylist(), ends, strict=True):
            # deque(maxlen) keeps the last max_len when the snapshot holds more.
            users[user_id] = _UserState(deque(events[begin:end], self.max_len), partition_of_user.get(user_id))
            begin = end
        return users

    # --- the tail -------------------------------------------------------------------

    def _run(self) -> None:
        """The tail thread: (re)connect, tail until stopped; errors are kept and retried."""
        while not self._stop.is_set():
            consumer = None
            try:
                consumer = self._connect()
                self._tail(consumer)
            except _Resync as why:
                _log.info("online history of %s: setting up the tail again (%s)", self.topic, why)
                self._stop.wait(0.05)
            except Exception as error:
                message = f"{type(error).__name__}: {error}"
                with self._lock:
                    self._errors += 1
                    self._last_error = message
                # Expected trouble (no broker, no topic) in one line; anything else with its traceback.
                _log.error(
                    "online history of %s: the tail failed (%s); retrying in %.1fs",
                    self.topic,
                    message,
                    self._backoff_s,
                    exc_info=not _expected(error),
                )
                self._stop.wait(self._backoff_s)
                self._backoff_s = min(self._backoff_s * 2, _BACKOFF_MAX_S)
            finally:
                with self._lock:
                    self._tailing = False
                if consumer is not None:
                    try:
                        consumer.close()
                    except Exception:  # closing a broken consumer must not stop the retry loop
                        _log.debug("closing the consumer failed", exc_info=True)

    def _connect(self) -> KafkaConsumer:
        """A consumer assigned the owned partitions and positioned at their next offsets."""
        from kafka import TopicPartition

        from ingestion.kafka_source import high_watermarks, kafka_consumer

        consumer = kafka_consumer(
            self.settings.kafka_bootstrap,
            client_id="streamrec-online-history",
            fetch_max_wait_ms=_FETCH_MAX_WAIT_MS,
            request_timeout_ms=_REQUEST_TIMEOUT_MS,
        )
        try:
            ends = {int(p): end for p, end in high_watermarks(consumer, self.topic).items()}
            owned = sorted(p for p in ends if self.owns(p))
            tps = [TopicPartition(self.topic, p) for p in owned]
            beginnings = {tp.partition: offset for tp, offset in consumer.beginning_offsets(tps).items()} if tps else {}
            with self._lock:
                for p in owned:
                    next_offset = self._next.get(p, self._bronze_next.get(p, 0))
                    if ends[p] < next_offset:
                        self._recreated += 1
                        _log.warning(
                            "partition %d of topic %s ends at offset %d, before the history's next offset %d: the"
                            " topic was recreated (the local broker keeps topics in memory only). Reading partition"
                            " %d from its beginning (offset %d); re-sent events are skipped as duplicates.",
                            p,
                            self.topic,
                            ends[p],
                            next_offset,
                            p,
                            beginnings[p],
                        )
                        next_offset = beginnings[p]
                    elif beginnings[p] > next_offset:
                        _log.error(
                            "partition %d of topic %s begins at offset %d, after the history's next offset %d:"
                            " records %d..%d are gone from the topic (retention) and are missing from the history",
                            p,
                            self.topic,
                            beginnings[p],
                            next_offset,
                            next_offset,
                            beginnings[p] - 1,
                        )
                        next_offset = beginnings[p]
                    self._next[p] = next_offset
                    self._high[p] = ends[p]
                self._assigned = owned
                self._advanced.notify_all()
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, self._next[tp.partition])
        except BaseException:
            consumer.close()
            raise
        _log.info("online history of %s: tailing partitions %s from %s", self.topic, owned, self._offsets(owned))
        return consumer

    def _offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        with self._lock:
            return {p: self._next[p] for p in partitions}

    def _tail(self, consumer: KafkaConsumer) -> None:
        """Poll and apply until stopped; raises _Resync when the assignment must change."""
        from kafka import TopicPartition
        from kafka.errors import OffsetOutOfRangeError

        tps = [TopicPartition(self.topic, p) for p in self._assigned]
        checked = time.monotonic()
        while not self._stop.is_set():
            try:
                polled = consumer.poll(timeout_ms=_POLL_TIMEOUT_MS, max_records=_MAX_POLL_RECORDS)
            except OffsetOutOfRangeError as error:
                raise _Resync(f"offsets out of range: {error}") from error
            for tp, records in polled.items():
                if records:
                    self._apply(tp.partition, records)
            recreated = []
            with self._lock:
                for tp in tps:
                    high = consumer.highwater(tp)
                    if high is not None:
                        self._high[tp.partition] = high
                        if high < self._next[tp.partition]:
                            recreated.append(tp.partition)
                self._tailing = True
            self._backoff_s = _BACKOFF_FIRST_S
            if recreated:
                raise _Resync(f"partitions {recreated} end before the history's offsets")
            if time.monotonic() - checked > _METADATA_EVERY_S:
                checked = time.monotonic()
                consumer.topics()  # a metadata request: finds added partitions
                partitions = consumer.partitions_for_topic(self.topic)
                if not partitions:
                    raise HistoryError(f"topic {self.topic} does not exist (any more)")
                owned = sorted(p for p in partitions if self.owns(p))
                if owned != self._assigned:
                    raise _Resync(f"owned partitions are now {owned}, were {self._assigned}")

    def _apply(self, partition: int, records: Sequence[Any]) -> None:
        """Validate ``records`` of ``partition`` (offset order) and apply the new valid events."""
        from ingestion.kafka_source import records_batch  # imports pyspark: only once tailing

        validated = validate_records(records_batch(records, partition), self._limits)
        valid = validated.valid
        fresh = self._seen.admit(_hash_ids(valid.column("event_id")))
        duplicates = int(len(fresh) - fresh.sum())
        if duplicates:
            valid = valid.filter(pa.array(fresh))
        columns = [valid.column(name).to_pylist() for name in ("user_id", "item_id", "action", "ts")]
        next_offset = records[-1].offset + 1
        with self._advanced:
            for user_id, item_id, action, ts in zip(*columns, strict=True):
                state = self._users.get(user_id)
                if state is None:
                    state = self._users[user_id] = _UserState(deque(maxlen=self.max_len), partition)
                state.partition = partition
                _insert(state.events, HistoryEvent(item_id, _ACTION_OF[action], ts))
            self._events_applied += valid.num_rows
            self._invalid += validated.invalid.num_rows
            self._duplicates += duplicates
            self._next[partition] = max(self._next.get(partition, 0), next_offset)
            self._advanced.notify_all()


def _expected(error: BaseException) -> bool:
    """Whether ``error`` is operational trouble worth one line (no traceback)."""
    from kafka.errors import KafkaError

    return isinstance(error, StreamrecError | KafkaError)


def _insert(events: deque[HistoryEvent], event: HistoryEvent) -> None:
    """Put a newly arrived ``event`` in its place (by ts, after equal ts), keeping the last maxlen."""
    if not events or events[-1].ts <= event.ts:
        events.append(event)  # the usual case; a full deque drops its oldest
        return
    position = len(events)
    while position > 0 and events[position - 1].ts > event.ts:
        position -= 1
    if len(events) == events.maxlen:
        if position == 0:
            return  # older than the whole window: not among the last maxlen events
        events.popleft()
        position -= 1
    events.insert(position, event)


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

"""The online user history of the serving layer: a Delta snapshot, then a live Kafka tail.

Each user's last ``max_len`` actions are kept in memory. ``OnlineHistory.bootstrap`` loads
``features/user_sequences`` at a pinned version (item indices turned back into item ids with
``features/item_vocab`` at its pinned version) and works out exactly where that snapshot
ends on the topic (``serving.history.snapshot``); ``start`` then tails the topic from there
on a daemon thread (``serving.history.tail``), so no event is counted twice or missed.
Records from there on are validated exactly as ingestion validates them
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

Threading: the tail thread is the only writer; ``get``, ``status`` and ``wait_for`` may be
called from any thread (one lock guards the histories and offsets; ``get`` copies a user's
events under it, so a returned ``UserHistory`` is consistent with its ``applied_offset``).

Memory: at most ``max_len`` events per user, plus 8 bytes per known event_id (event ids are
kept as 64-bit hashes, so two distinct ids colliding, with odds about n^2 / 2^65 for n ids,
would drop the later event as a duplicate).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from features.tables import USER_SEQUENCES_TABLE
from infra.settings import Settings
from ingestion.kafka_client import records_batch
from ingestion.schema import ACTIONS
from ingestion.validation import ValidationLimits, validate_records
from serving.history.snapshot import Bootstrap, HistoryEvent, Ownership, UserState, hash_ids, load_snapshot
from serving.history.tail import HistoryTail

_log = logging.getLogger(__name__)

_ACTION_OF = {action: action for action in ACTIONS}  # one str object per action


@dataclass(frozen=True)
class HistoryRevision:
    """Where a user's held events stand, for a reader that follows them incrementally
    (``serving.user_state``): ``store`` names the history instance (a restarted shard is another
    one, its counts start again), ``appended`` counts the events added at the end of the user's
    events since the bootstrap, ``reordered`` those put before the end (then the held events were
    rewritten, not extended)."""

    store: str
    appended: int
    reordered: int


@dataclass(frozen=True)
class UserHistory:
    """A user's last actions and the Kafka position they reflect (serving's lineage)."""

    user_id: str
    events: tuple[HistoryEvent, ...]  # oldest first, at most max_len, by ts then Kafka order
    partition: int | None  # the user's Kafka partition; None if unknown
    applied_offset: int | None  # last offset of that partition applied (None: nothing there yet)
    revision: HistoryRevision | None = field(default=None, compare=False)  # bookkeeping, not content


def partition_of(user_id: str, num_partitions: int) -> int:
    """The partition the producers' default partitioner (Kafka's murmur2) gives ``user_id``.

    For routing a user with no history yet to the shard that owns their partition.
    """
    from kafka.partitioner.default import murmur2

    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % num_partitions


class OnlineHistory:
    """Every owned user's last ``max_len`` actions: a pinned feature snapshot plus a live tail.

    ``partitions``: the partitions this shard owns (None: all of the topic's, including ones
    added later). ``shard=(index, count)`` instead owns every partition p with
    ``p % count == index`` (``settings.serve.history_shards``), also ones added later.
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
        self.topic = settings.kafka.topic
        self.user_sequences_version = user_sequences_version
        self.item_vocab_version = item_vocab_version
        self.max_len = max_len
        self.store_id = uuid.uuid4().hex  # HistoryRevision.store
        self._owned = Ownership(frozenset(partitions) if partitions is not None else None, shard)
        self._limits = ValidationLimits.from_settings(settings.ingest)

        self._lock = threading.Lock()
        self._advanced = threading.Condition(self._lock)
        self._bootstrap_lock = threading.Lock()
        self._bootstrap: Bootstrap | None = None
        self._snapshot_max_len: int | None = None
        self._users: dict[str, UserState] = {}
        self._seen = _SeenIds(np.empty(0, np.uint64))
        self._bronze_next: dict[int, int] = {}
        self._next: dict[int, int] = {}  # partition -> next offset to apply
        self._high: dict[int, int | None] = {}  # partition -> high watermark last seen
        self._events_applied = 0
        self._invalid = 0
        self._duplicates = 0
        self._recreated = 0
        self._errors = 0
        self._last_error: str | None = None
        self._tailing = False
        self._tail: HistoryTail | None = None

    # --- public API -----------------------------------------------------------------

    def owns(self, partition: int) -> bool:
        """Whether this shard owns ``partition``."""
        return self._owned.owns(partition)

    def bootstrap(self) -> Bootstrap:
        """Load the snapshot (item indices -> item ids via item_vocab at its version) and
        compute where the tail starts. Done once; later calls return the same answer."""
        with self._bootstrap_lock:
            if self._bootstrap is not None:
                return self._bootstrap
            started = time.monotonic()
            snapshot = load_snapshot(
                self.settings, self.user_sequences_version, self.item_vocab_version, self.max_len, self._owned
            )
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
        if self._tail is not None and self._tail.alive:
            return
        self._tail = HistoryTail(self)
        self._tail.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the tail (waits for its thread to close the consumer)."""
        tail, self._tail = self._tail, None
        if tail is not None:
            tail.stop(timeout_s)

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
            revision = HistoryRevision(self.store_id, state.appended, state.reordered)
        applied = next_offset - 1 if next_offset else None
        return UserHistory(user_id, events, partition, applied, revision)

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
                "running": self._tail is not None and self._tail.alive,
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

    # --- what the tail thread writes -------------------------------------------------

    def reposition(self, ends: dict[int, int], beginnings: dict[int, int]) -> dict[int, int]:
        """Where the tail (re)starts each owned partition, given its end and beginning on the
        topic now: the next offset, or the beginning when the topic was recreated (it ends
        before the next offset) or lost records to retention. Returns {partition: offset}."""
        with self._lock:
            for p, end in ends.items():
                next_offset = self._next.get(p, self._bronze_next.get(p, 0))
                if end < next_offset:
                    self._recreated += 1
                    _log.warning(
                        "partition %d of topic %s ends at offset %d, before the history's next offset %d: the"
                        " topic was recreated (the local broker keeps topics in memory only). Reading partition"
                        " %d from its beginning (offset %d); re-sent events are skipped as duplicates.",
                        p,
                        self.topic,
                        end,
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
                self._high[p] = end
            self._advanced.notify_all()
            return {p: self._next[p] for p in ends}

    def observe_highs(self, highs: dict[int, int | None]) -> list[int]:
        """Keep the high watermarks the tail saw (None: not known yet); the partitions that end
        before their next offset (the topic was recreated under the tail)."""
        recreated = []
        with self._lock:
            for partition, high in highs.items():
                if high is not None:
                    self._high[partition] = high
                    if high < self._next[partition]:
                        recreated.append(partition)
            self._tailing = True
        return recreated

    def set_tailing(self, tailing: bool) -> None:
        with self._lock:
            self._tailing = tailing

    def record_error(self, message: str) -> None:
        """Count a failure of the tail and keep its message (``status()["last_error"]``)."""
        with self._lock:
            self._errors += 1
            self._last_error = message

    def apply(self, partition: int, records: Sequence[Any]) -> None:
        """Validate ``records`` of ``partition`` (offset order) and apply the new valid events
        (the tail thread)."""
        validated = validate_records(records_batch(records, partition), self._limits)
        valid = validated.valid
        fresh = self._seen.admit(hash_ids(valid.column("event_id")))
        duplicates = int(len(fresh) - fresh.sum())
        if duplicates:
            valid = valid.filter(pa.array(fresh))
        columns = [valid.column(name).to_pylist() for name in ("user_id", "item_id", "action", "ts")]
        next_offset = records[-1].offset + 1
        with self._advanced:
            for user_id, item_id, action, ts in zip(*columns, strict=True):
                state = self._users.get(user_id)
                if state is None:
                    state = self._users[user_id] = UserState(deque(maxlen=self.max_len), partition)
                state.partition = partition
                _insert(state, HistoryEvent(item_id, _ACTION_OF[action], ts))
            self._events_applied += valid.num_rows
            self._invalid += validated.invalid.num_rows
            self._duplicates += duplicates
            self._next[partition] = max(self._next.get(partition, 0), next_offset)
            self._advanced.notify_all()


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


def _insert(state: UserState, event: HistoryEvent) -> None:
    """Put a newly arrived ``event`` in its place among the user's events (by ts, after equal ts),
    keeping the last maxlen, and count where it went (``UserState.appended``/``reordered``)."""
    events = state.events
    if not events or events[-1].ts <= event.ts:
        events.append(event)  # the usual case; a full deque drops its oldest
        state.appended += 1
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
    state.reordered += 1

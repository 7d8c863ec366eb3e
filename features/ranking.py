"""features/ranking_examples: exposures joined with what the user did next (the label join).

Rules (docs/ranking.md has examples). Events are a user's silver events in EVENT_ORDER
(ts, then Kafka partition and offset). ``W`` is ``RankingSpec.window_ms``.

* **Exposures (rows).** Per (user, item), walk that pair's events in event order. An
  ``impression`` always opens a new exposure. Any other action (click, view, like, share,
  purchase, skip, dislike) joins the pair's current exposure when its ts is at most ``W``
  after that exposure's ts (``ts - exposure_ts <= W``: an action exactly at the window end
  counts); otherwise it opens a new exposure itself (an *organic* exposure: the item was
  consumed without an impression of it within the window before). Each exposure is one row;
  its ``event_id``, ``ts`` and Kafka position are those of the event that opened it and
  ``anchor_action`` is that event's action (``impression`` or the organic action).
* **Labels.** A row's label for task T is True when any event that joined its exposure, the
  opening event included, has one of T's actions (``features.tables.RANKING_TASKS``: click =
  click or view, like = like or share, purchase; skip and dislike as negative tasks).
  Because a new impression opens a new exposure, an action is credited to the latest
  impression of the item before it (last touch): two impressions of an item followed by a
  click give one positive row (the second impression) and one negative row.
* **History.** The user's events with ts strictly before the row's ts (an event at the
  same millisecond never leaks in, whatever its Kafka order), the last ``max_len`` of them,
  in event order: item indices, action names, timestamps (as features/user_sequences).
* **Split.** By the row's ts: ``test`` from ``test_from_ts`` on, ``validation`` from
  ``validation_from_ts`` on, ``train`` before. The boundaries are given by the spec, or
  recorded by an earlier build of the table, or else set by the first full build at the
  0.8 and 0.9 quantiles of the rows' ts; they are recorded in every commit and kept by later
  builds, so existing rows never change split when new data arrives.
* **Complete windows.** Each commit records the largest event ts of silver (the
  watermark); the reader leaves out rows whose window is still open (``ts + W`` beyond it),
  whose labels could still change.

The kernel (``ranking_rows``) is vectorised numpy over many users at once; the full build
runs it inside Spark (``spark_jobs.ranking_examples``: users repartitioned, one call per
partition), the incremental build on the touched users in the driver.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.tables import LABEL_COLUMNS, RANKING_EXAMPLES_SCHEMA, RANKING_ROWS_SCHEMA, RANKING_TASKS
from ingestion.schema import ACTIONS, EVENT_ORDER

DEFAULT_WINDOW_MS = 3_600_000  # one hour
DEFAULT_MAX_LEN = 50
SPLIT_QUANTILES = (0.8, 0.9)  # validation and test start at these quantiles of the rows' ts

KERNEL_COLUMNS = ["event_id", "user_id", "item_index", "action", "ts", "kafka_partition", "kafka_offset"]
"""The columns ``ranking_rows`` reads (silver events with the vocabulary's item_index)."""

_TASK_BITS = np.zeros(len(ACTIONS), dtype=np.int64)
for _bit, _actions in enumerate(RANKING_TASKS.values()):
    for _action in _actions:
        _TASK_BITS[ACTIONS.index(_action)] |= 1 << _bit
_IMPRESSION = ACTIONS.index("impression")


@dataclass(frozen=True)
class RankingSpec:
    """How features/ranking_examples is built. A change of ``window_ms`` or ``max_len``, or
    explicit split boundaries other than the recorded ones, makes the next build a full one."""

    window_ms: int = DEFAULT_WINDOW_MS
    max_len: int = DEFAULT_MAX_LEN
    validation_from_ts: int | None = None  # None: keep the recorded boundary, else the 0.8 quantile
    test_from_ts: int | None = None  # None: keep the recorded boundary, else the 0.9 quantile

    def __post_init__(self) -> None:
        if self.window_ms < 0:
            raise ValueError("window_ms must be >= 0")
        if self.max_len < 1:
            raise ValueError("max_len must be >= 1")
        if (self.validation_from_ts is None) != (self.test_from_ts is None):
            raise ValueError("give both validation_from_ts and test_from_ts, or neither")
        if self.validation_from_ts is not None and self.test_from_ts is not None:
            if self.validation_from_ts > self.test_from_ts:
                raise ValueError("validation_from_ts must not be after test_from_ts")

    @property
    def boundaries(self) -> tuple[int, int] | None:
        if self.validation_from_ts is None or self.test_from_ts is None:
            return None
        return self.validation_from_ts, self.test_from_ts


def ranking_rows(events: pa.Table, window_ms: int, max_len: int) -> pa.Table:
    """Rows (``RANKING_ROWS_SCHEMA``, no split yet) of every exposure in ``events``
    (``KERNEL_COLUMNS``; every event of each user whose rows are wanted), in event order."""
    if len(events) == 0:
        return RANKING_ROWS_SCHEMA.empty_table()
    ordered = events.select(KERNEL_COLUMNS).sort_by([(name, "ascending") for name in EVENT_ORDER])
    count = len(ordered)
    position = np.arange(count)
    users = ordered.column("user_id").combine_chunks()
    user_change = np.flatnonzero(pc.not_equal(users[1:], users[:-1]).to_numpy(zero_copy_only=False)) + 1
    user_start = np.concatenate([[0], user_change])
    user_of = np.repeat(np.arange(len(user_start)), np.diff(np.concatenate([user_start, [count]])))
    ts = _int64(ordered.column("ts"))
    items = _int64(ordered.column("item_index"))
    action_index = pc.index_in(ordered.column("action"), value_set=pa.array(ACTIONS))
    if action_index.null_count:
        raise ValueError("events hold actions outside ingestion.schema.ACTIONS")
    actions = _int64(action_index)

    # History of event i: the user's events before the first one with ts == ts[i].
    new_run = np.ones(count, dtype=bool)
    new_run[1:] = (user_of[1:] != user_of[:-1]) | (ts[1:] != ts[:-1])
    history_end = np.maximum.accumulate(np.where(new_run, position, 0))
    history_start = np.maximum(user_start[user_of], history_end - max_len)

    # Exposures: per (user, item) pair, in event order.
    order = np.lexsort((position, items, user_of))
    pair_user, pair_item, pair_ts = user_of[order], items[order], ts[order]
    new_pair = np.ones(count, dtype=bool)
    new_pair[1:] = (pair_user[1:] != pair_user[:-1]) | (pair_item[1:] != pair_item[:-1])
    pair_of = np.cumsum(new_pair) - 1
    pair_start = np.flatnonzero(new_pair)
    pair_end = np.append(pair_start[1:], count)[pair_of]
    # First later event of the pair past the window of event q: search (pair, rank of ts) keys.
    distinct_ts = np.unique(pair_ts)
    stride = len(distinct_ts) + 1
    keys = pair_of * stride + np.searchsorted(distinct_ts, pair_ts)
    in_window = np.searchsorted(distinct_ts, pair_ts + window_ms, side="right")
    after_window = np.searchsorted(keys, pair_of * stride + in_window, side="left")
    # First later impression of the pair.
    impression_at = np.where(actions[order] == _IMPRESSION, position, count)
    next_impression = np.append(np.minimum.accumulate(impression_at[::-1])[::-1][1:], count)
    following = np.minimum(after_window, next_impression)  # the exposure after one opened at q
    following = np.where(following < pair_end, following, -1)
    opens = np.zeros(count, dtype=bool)
    frontier = pair_start
    while len(frontier):  # one round per exposure of the pair with the most of them
        opens[frontier] = True
        frontier = following[frontier]
        frontier = frontier[frontier >= 0]
    exposure_of = np.maximum.accumulate(np.where(opens, position, -1))  # pair starts always open one
    bits = np.zeros(count, dtype=np.int64)
    np.bitwise_or.at(bits, exposure_of, _TASK_BITS[actions[order]])

    opening = np.flatnonzero(opens)
    rows = np.sort(order[opening])  # event order
    labels = np.zeros(count, dtype=np.int64)
    labels[order[opening]] = bits[opening]
    return _rows(ordered, rows, labels[rows], history_start[rows], history_end[rows])


def _rows(ordered: pa.Table, rows: np.ndarray, labels: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.Table:
    lengths = ends - starts
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    flat = pa.array(within + np.repeat(starts, lengths))
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    taken = pa.array(rows)
    columns: dict[str, pa.Array] = {
        "event_id": ordered.column("event_id").take(taken),
        "user_id": ordered.column("user_id").take(taken),
        "ts": ordered.column("ts").take(taken),
        "kafka_partition": ordered.column("kafka_partition").take(taken),
        "kafka_offset": ordered.column("kafka_offset").take(taken),
        "item_index": ordered.column("item_index").take(taken),
        "anchor_action": ordered.column("action").take(taken),
    }
    for name, source in (("item_indices", "item_index"), ("actions", "action"), ("timestamps", "ts")):
        values = ordered.column(source).take(flat).combine_chunks()
        columns[name] = pa.ListArray.from_arrays(offsets, values)
    for bit, name in enumerate(LABEL_COLUMNS):
        columns[name] = pa.array((labels >> bit) & 1 == 1)
    return pa.table(columns).cast(RANKING_ROWS_SCHEMA)


def _int64(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)


def quantile_boundaries(ts: np.ndarray) -> tuple[int, int]:
    """(validation_from_ts, test_from_ts) at SPLIT_QUANTILES of the rows' ``ts`` (0, 0 for none)."""
    if len(ts) == 0:
        return 0, 0
    validation, test = np.quantile(np.asarray(ts, dtype=np.int64), SPLIT_QUANTILES, method="lower")
    return int(validation), int(test)


def with_split(rows: pa.Table, boundaries: tuple[int, int]) -> pa.Table:
    """``rows`` with the ``split`` column of the boundaries (validation_from_ts, test_from_ts)."""
    ts = _int64(rows.column("ts"))
    split = np.where(ts >= boundaries[1], "test", np.where(ts >= boundaries[0], "validation", "train"))
    return rows.append_column("split", pa.array(split, pa.string())).cast(RANKING_EXAMPLES_SCHEMA)


def affected_from(new_rows: pa.Table, window_ms: int) -> pa.Table:
    """Per user of ``new_rows`` the ts from which rows can change: their earliest new event
    minus the window (user_id, from_ts). Earlier rows keep their history (only events before
    them), their exposure (decided by earlier events) and their labels (their window closed
    before any new event)."""
    first = new_rows.group_by("user_id").aggregate([("ts", "min")])
    from_ts = pc.subtract(first.column("ts_min"), pa.scalar(window_ms, pa.int64()))
    return pa.table({"user_id": first.column("user_id"), "from_ts": from_ts})


def rows_from(rows: pa.Table, affected: pa.Table) -> pa.Table:
    """The rows of ``rows`` of the users in ``affected`` at or after their ``from_ts``."""
    where = pc.index_in(
        rows.column("user_id").cast(pa.string()), value_set=affected.column("user_id").cast(pa.string())
    )
    from_ts = pc.take(affected.column("from_ts"), where)  # null for users not in ``affected``
    return rows.filter(pc.fill_null(pc.greater_equal(rows.column("ts"), from_ts), False))

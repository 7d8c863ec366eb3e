"""The incremental feature transforms, on Arrow tables in the driver.

An incremental build touches only the new silver rows and the feature rows of the users
and items they name: data no larger than what a full build already collects into the
driver to write its tables. Running it with Arrow avoids Spark's fixed start and job
overheads, which dominate such small updates. ``tests/features`` checks that each result
equals the Spark full build (``features.spark_jobs``) on the same events. ``new_items`` also
numbers the new items a full build finds, so both builds assign indices the same way.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.tables import ITEM_STATS_SCHEMA, ITEM_VOCAB_SCHEMA, STAT_COLUMNS, USER_SEQUENCES_SCHEMA
from ingestion.schema import ACTIONS, EVENT_ORDER

# Silver events with their vocabulary index, as the feature build and the follow job handle them.
INDEXED_EVENTS = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_index", pa.int64()),
        ("action", pa.string()),
        ("ts", pa.int64()),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
    ]
)


def new_items(events: pa.Table, vocab: pa.Table) -> pa.Table:
    """Vocabulary rows for the items of ``events`` not in ``vocab``.

    New items get the next indices after the largest in ``vocab``, ordered by
    (first_seen_ts, item_id).
    """
    unseen = events.filter(pc.invert(pc.is_in(events.column("item_id"), value_set=vocab.column("item_id"))))
    first = unseen.group_by("item_id").aggregate([("ts", "min")]).rename_columns(["item_id", "first_seen_ts"])
    first = first.sort_by([("first_seen_ts", "ascending"), ("item_id", "ascending")])
    start = (pc.max(vocab.column("item_index")).as_py() or 0) + 1
    indices = pa.array(np.arange(start, start + len(first), dtype=np.int64))
    return pa.table([first.column("item_id"), indices, first.column("first_seen_ts")], schema=ITEM_VOCAB_SCHEMA)


def with_item_index(events: pa.Table, vocab: pa.Table) -> pa.Table:
    """``events`` with the item_index of each item_id (every item must be in ``vocab``)."""
    indexed = events.join(vocab.select(["item_id", "item_index"]), "item_id", join_type="inner")
    if len(indexed) != len(events):
        raise ValueError("events name items that are missing from the vocabulary")
    return indexed


def sequences_from_events(events: pa.Table, max_len: int) -> pa.Table:
    """user_sequences rows from indexed events: per user the last ``max_len`` in EVENT_ORDER."""
    if len(events) == 0:
        return USER_SEQUENCES_SCHEMA.empty_table()
    ordered = events.sort_by([(name, "ascending") for name in EVENT_ORDER])
    users = ordered.column("user_id").combine_chunks()
    boundary = np.flatnonzero(pc.not_equal(users[1:], users[:-1]).to_numpy(zero_copy_only=False)) + 1
    starts = np.concatenate([[0], boundary])
    ends = np.concatenate([boundary, [len(ordered)]])
    keep_from = np.maximum(starts, ends - max_len)
    lengths = ends - keep_from
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = within + np.repeat(keep_from, lengths)
    kept = ordered.take(keep)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    columns = {
        "user_id": users.take(pa.array(starts)),
        "item_indices": pa.ListArray.from_arrays(offsets, kept.column("item_index").combine_chunks()),
        "actions": pa.ListArray.from_arrays(offsets, kept.column("action").combine_chunks()),
        "timestamps": pa.ListArray.from_arrays(offsets, kept.column("ts").combine_chunks()),
    }
    return pa.table(columns).cast(USER_SEQUENCES_SCHEMA)


def stored_events(sequences: pa.Table) -> pa.Table:
    """user_sequences rows back as indexed events, ordered as stored.

    Stored events sort before any Kafka record (partition -1) and keep their stored order
    (offset = position), so appending strictly later events and re-truncating with
    ``sequences_from_events`` gives what a rebuild from silver gives.
    """
    parents = pc.list_parent_indices(sequences.column("item_indices"))
    lengths = pc.list_value_length(sequences.column("item_indices")).to_numpy(zero_copy_only=False)
    positions = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return pa.table(
        {
            "user_id": sequences.column("user_id").take(parents),
            "item_index": pc.list_flatten(sequences.column("item_indices")),
            "action": pc.list_flatten(sequences.column("actions")),
            "ts": pc.list_flatten(sequences.column("timestamps")),
            "kafka_partition": pa.array(np.full(len(positions), -1, dtype=np.int32)),
            "kafka_offset": pa.array(positions.astype(np.int64)),
        }
    )


def late_users(sequences: pa.Table, events: pa.Table) -> pa.Array:
    """Users of ``events`` with an event at or before the last stored one (not a pure append)."""
    stored = pa.table({"user_id": sequences.column("user_id"), "last_ts": _last_ts(sequences)})
    first_new = events.group_by("user_id").aggregate([("ts", "min")])
    joined = first_new.join(stored, "user_id", join_type="inner")
    late = joined.filter(pc.less_equal(joined.column("ts_min"), joined.column("last_ts")))
    return late.column("user_id").combine_chunks()


def _last_ts(sequences: pa.Table) -> pa.Array:
    lengths = pc.list_value_length(sequences.column("timestamps")).to_numpy(zero_copy_only=False)
    return pc.list_flatten(sequences.column("timestamps")).take(pa.array(np.cumsum(lengths) - 1))


def stats_of_events(events: pa.Table) -> pa.Table:
    """Per item_id: a count per action (STAT_COLUMNS) and first/last seen ts."""
    counts = events.group_by(["item_id", "action"]).aggregate([("ts", "count")])
    seen = events.group_by("item_id").aggregate([("ts", "min"), ("ts", "max")])
    items = seen.column("item_id")
    position = pc.index_in(counts.column("item_id"), value_set=items).to_numpy(zero_copy_only=False)
    action = pc.index_in(counts.column("action"), value_set=pa.array(ACTIONS))
    if action.null_count:
        raise ValueError(f"unknown actions {pc.unique(pc.filter(counts.column('action'), pc.is_null(action)))}")
    table = np.zeros((len(items), len(ACTIONS)), dtype=np.int64)
    table[position, action.to_numpy(zero_copy_only=False)] = counts.column("ts_count").to_numpy()
    columns = {"item_id": items}
    columns.update({name: table[:, column] for column, name in enumerate(STAT_COLUMNS)})
    columns.update(first_seen_ts=seen.column("ts_min"), last_seen_ts=seen.column("ts_max"))
    return pa.table(columns)


def add_stats(stored: pa.Table, delta: pa.Table, vocab: pa.Table) -> pa.Table:
    """item_stats rows of the items in ``delta``: ``stored`` (may lack them) plus ``delta``."""
    joined = delta.join(stored.drop_columns(["item_index"]), "item_id", join_type="left outer", right_suffix="_old")
    columns: dict[str, pa.Array] = {"item_id": joined.column("item_id")}
    for name in STAT_COLUMNS:
        columns[name] = pc.add(joined.column(name), pc.fill_null(joined.column(f"{name}_old"), 0))
    first_old, last_old = joined.column("first_seen_ts_old"), joined.column("last_seen_ts_old")
    columns["first_seen_ts"] = pc.min_element_wise(joined.column("first_seen_ts"), first_old, skip_nulls=True)
    columns["last_seen_ts"] = pc.max_element_wise(joined.column("last_seen_ts"), last_old, skip_nulls=True)
    merged = with_item_index(pa.table(columns), vocab)
    return merged.select(ITEM_STATS_SCHEMA.names).cast(ITEM_STATS_SCHEMA)

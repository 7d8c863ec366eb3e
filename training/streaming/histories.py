"""The follow job's user histories: features/user_sequences at the base's version plus the
silver events learned since, and the training examples cut from them.

The histories are built by the feature build's own transforms (``features.arrow_jobs``): a
touched user's stored rows back as events, the new events appended, ordered by ``EVENT_ORDER``
and cut to ``features.max_len`` (``sequences_from_events``), so the follow job's history of a
user is what the next incremental build writes for them (an event later than nothing stored
included; a late event is placed by its ts among the stored ones, where the build would
re-read the user's silver rows).

Examples are the feature reader's train form (``features.examples.SequenceExamples``, targets
0: every position predicts the next event), one row per user: the last ``max_len`` events of
their history, without the items that have no row in the follow job's table yet.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from features import arrow_jobs
from features.examples import SequenceExamples
from features.reader import flatten_sequences
from features.splits import gather
from features.tables import USER_SEQUENCES_SCHEMA, USER_SEQUENCES_TABLE, rows_with
from infra.settings import Settings

"""The events ``sequences_from_events`` orders and cuts: silver rows with their item index."""


class Histories:
    """Every user's history (user_sequences rows), as of the events added so far."""

    def __init__(self, rows: pa.Table, max_len: int) -> None:
        """``rows``: user_sequences rows (the base's); ``max_len``: events kept per user."""
        self.rows = rows.select(USER_SEQUENCES_SCHEMA.names).cast(USER_SEQUENCES_SCHEMA)
        self.max_len = max_len

    @classmethod
    def read(cls, settings: Settings, version: int) -> Histories:
        """The histories of features/user_sequences at ``version``."""
        table = DeltaTable(settings.table_uri(USER_SEQUENCES_TABLE), version=version).to_pyarrow_table()
        return cls(table, settings.features.max_len)

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, events: pa.Table) -> pa.Table:
        """Append indexed ``events`` (``arrow_jobs.INDEXED_EVENTS`` columns) to their users' histories;
        returns the touched users' rows after it."""
        if len(events) == 0:
            return USER_SEQUENCES_SCHEMA.empty_table()
        events = events.select(arrow_jobs.INDEXED_EVENTS.names).cast(arrow_jobs.INDEXED_EVENTS)
        users = pc.unique(events.column("user_id"))
        touched = pc.is_in(self.rows.column("user_id").cast(pa.string()), value_set=users)
        stored = arrow_jobs.stored_events(self.rows.filter(touched)).cast(arrow_jobs.INDEXED_EVENTS)
        rebuilt = arrow_jobs.sequences_from_events(pa.concat_tables([stored, events]), self.max_len)
        self.rows = pa.concat_tables([self.rows.filter(pc.invert(touched)), rebuilt])
        return rebuilt

    def sample(self, count: int, rng: np.random.Generator, exclude: pa.Table | None = None) -> pa.Table:
        """``count`` users' rows drawn without replacement (fewer when there are fewer), none
        of the users of ``exclude`` (rows with a ``user_id`` column)."""
        if count <= 0 or len(self.rows) == 0:
            return USER_SEQUENCES_SCHEMA.empty_table()
        candidates = np.arange(len(self.rows))
        if exclude is not None and len(exclude):
            excluded = pc.is_in(self.rows.column("user_id").cast(pa.string()), value_set=exclude.column("user_id"))
            candidates = np.flatnonzero(~excluded.to_numpy(zero_copy_only=False))
        chosen = rng.choice(candidates, size=min(count, len(candidates)), replace=False)
        return self.rows.take(pa.array(np.sort(chosen)))

    def of_users(self, user_ids: pa.Array) -> pa.Table:
        """The rows of ``user_ids`` (those that have a history)."""
        return self.rows.filter(rows_with("user_id", user_ids))


def examples_of(rows: pa.Table, max_len: int, known_items: int) -> SequenceExamples:
    """Train-form examples (targets 0) of user_sequences ``rows``: per user the last ``max_len``
    events whose item has a row (index <= ``known_items``); users left with fewer than two
    events (nothing to predict) are dropped."""
    user_ids, flat = flatten_sequences(rows, "follow histories")
    keep = flat.items <= known_items
    per_row = np.bincount(flat.row_of_event()[keep], minlength=flat.rows)
    offsets = np.concatenate([[0], np.cumsum(per_row)])
    items, actions, timestamps = flat.items[keep], flat.action_ids[keep], flat.timestamps[keep]
    rows_kept = np.flatnonzero(per_row >= 2)
    ends = offsets[1:][rows_kept]
    starts = np.maximum(offsets[:-1][rows_kept], ends - max_len)
    item_indices, action_ids, ts = gather([items, actions, timestamps], starts, ends, max_len)
    return SequenceExamples(
        user_ids=user_ids[rows_kept],
        item_indices=item_indices,
        action_ids=action_ids,
        timestamps=ts,
        lengths=(ends - starts).astype(np.int64),
        targets=np.zeros(len(rows_kept), dtype=np.int64),
        num_items=known_items,
    )

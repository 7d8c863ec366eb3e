"""Reading silver/events with Arrow: what changed between two versions, and one user's rows.

Changes come from the Delta file lists of the two versions (``infra.lake.rows_between``):
rows of files added since the older version, minus rows of removed files (a compaction removes and re-adds the same
event_ids, which cancel out). Silver is append-only by contract; if rows disappeared,
incremental builds cannot patch the features and ``SilverChanges.lost_rows`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from features.tables import rows_with
from infra.lake import rows_between

EVENT_COLUMNS = ["event_id", "user_id", "item_id", "action", "ts", "kafka_partition", "kafka_offset"]
"""The silver columns the feature jobs read."""


@dataclass(frozen=True)
class SilverChanges:
    """Silver rows added between two versions, and how many rows were lost."""

    since: int
    until: int
    new_rows: pa.Table  # EVENT_COLUMNS, or the columns asked for
    lost_rows: int


def silver_changes(uri: str, since: int, until: int, columns: list[str] | None = None) -> SilverChanges:
    """Rows in silver ``until`` that were not in silver ``since`` (by event_id); ``columns``
    (default EVENT_COLUMNS) must include event_id."""
    added, removed = rows_between(uri, since, until, columns or EVENT_COLUMNS)
    removed_ids = removed.column("event_id")
    new_rows = added.filter(pc.invert(pc.is_in(added.column("event_id"), value_set=removed_ids)))
    lost = removed.filter(pc.invert(pc.is_in(removed_ids, value_set=added.column("event_id"))))
    return SilverChanges(since=since, until=until, new_rows=new_rows, lost_rows=len(lost))


def rows_of_users(uri: str, version: int, user_ids: pa.Array) -> pa.Table:
    """Every silver row (EVENT_COLUMNS) of ``user_ids`` at ``version``."""
    dataset = DeltaTable(uri, version=version).to_pyarrow_dataset()
    return dataset.to_table(columns=EVENT_COLUMNS, filter=rows_with("user_id", user_ids))

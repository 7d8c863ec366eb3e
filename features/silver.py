"""Reading silver/events with Arrow: what changed between two versions, and one user's rows.

Changes come from the Delta file lists of the two versions: rows of files added since the
older version, minus rows of removed files (a compaction removes and re-adds the same
event_ids, which cancel out). Silver is append-only by contract; if rows disappeared,
incremental builds cannot patch the features and ``SilverChanges.lost_rows`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable

from features.tables import rows_with
from ingestion.schema import SILVER_SCHEMA

EVENT_COLUMNS = ["event_id", "user_id", "item_id", "action", "ts", "kafka_partition", "kafka_offset"]
"""The silver columns the feature jobs read."""


@dataclass(frozen=True)
class SilverChanges:
    """Silver rows added between two versions, and how many rows were lost."""

    since: int
    until: int
    new_rows: pa.Table  # EVENT_COLUMNS
    lost_rows: int


def silver_changes(uri: str, since: int, until: int) -> SilverChanges:
    """Rows in silver ``until`` that were not in silver ``since`` (by event_id)."""
    old = _fragments(uri, since)
    new = _fragments(uri, until)
    added = _read([new[path] for path in new.keys() - old.keys()])
    removed = _read([old[path] for path in old.keys() - new.keys()])
    removed_ids = removed.column("event_id")
    new_rows = added.filter(pc.invert(pc.is_in(added.column("event_id"), value_set=removed_ids)))
    lost = removed.filter(pc.invert(pc.is_in(removed_ids, value_set=added.column("event_id"))))
    return SilverChanges(since=since, until=until, new_rows=new_rows, lost_rows=len(lost))


def rows_of_users(uri: str, version: int, user_ids: pa.Array) -> pa.Table:
    """Every silver row (EVENT_COLUMNS) of ``user_ids`` at ``version``."""
    dataset = DeltaTable(uri, version=version).to_pyarrow_dataset()
    return dataset.to_table(columns=EVENT_COLUMNS, filter=rows_with("user_id", user_ids))


def _fragments(uri: str, version: int) -> dict[str, tuple[ds.FileSystemDataset, ds.Fragment]]:
    dataset = DeltaTable(uri, version=version).to_pyarrow_dataset()
    return {fragment.path: (dataset, fragment) for fragment in dataset.get_fragments()}


def _read(pairs: list[tuple[ds.FileSystemDataset, ds.Fragment]]) -> pa.Table:
    if not pairs:
        return pa.schema([SILVER_SCHEMA.field(name) for name in EVENT_COLUMNS]).empty_table()
    dataset = pairs[0][0]
    subset = ds.FileSystemDataset(
        [fragment for _, fragment in pairs], dataset.schema, dataset.format, filesystem=dataset.filesystem
    )
    return subset.to_table(columns=EVENT_COLUMNS)

"""What a materialisation records about a Delta table: its version, rows and what it reflects.

The metadata of every lake and feature asset names the Delta version it materialised, so the
asset graph can be followed back (a feature table version records the silver version it
reflects; silver, the bronze version it caught up with; bronze, the Kafka offsets).
"""

from __future__ import annotations

import time
from typing import Any

import dagster as dg
from deltalake import DeltaTable

from features.tables import recorded_state
from infra.lake import committed_version, table_version
from infra.settings import Settings


def delta_version(settings: Settings, table: str) -> int | None:
    """The latest version of lake table ``table`` (None: no table yet)."""
    return table_version(settings.table_uri(table))


def row_count(settings: Settings, table: str, version: int | None = None) -> int:
    """Rows of lake table ``table`` at ``version`` (latest by default); 0 without a table."""
    uri = settings.table_uri(table)
    if not DeltaTable.is_deltatable(uri):
        return 0
    return int(DeltaTable(uri, version=version).to_pyarrow_dataset().count_rows())


def split_rows(settings: Settings, table: str, version: int | None = None) -> dict[str, int]:
    """Rows per value of the ``split`` column of lake table ``table`` (features/ranking_examples)."""
    import pyarrow.compute as pc

    uri = settings.table_uri(table)
    if not DeltaTable.is_deltatable(uri):
        return {}
    splits = DeltaTable(uri, version=version).to_pyarrow_dataset().to_table(columns=["split"]).column("split")
    return {str(entry["values"]): int(entry["counts"]) for entry in pc.value_counts(splits).to_pylist()}


def table_metadata(settings: Settings, table: str) -> dict[str, Any]:
    """Metadata of a lake table as it is now: table name, URI, Delta version, rows."""
    version = delta_version(settings, table)
    return {
        "table": table,
        "uri": dg.MetadataValue.path(settings.table_uri(table)),
        "delta_version": version,
        "rows": row_count(settings, table, version) if version is not None else 0,
    }


def data_version(version: int | None) -> dg.DataVersion | None:
    """The Dagster data version of a Delta table version."""
    return None if version is None else dg.DataVersion(f"delta-v{version}")


def feature_table_metadata(settings: Settings, table: str) -> dict[str, Any]:
    """``table_metadata`` plus the silver version and max_len the feature table's build recorded."""
    metadata = table_metadata(settings, table)
    state = recorded_state(settings.table_uri(table))
    if state is not None:
        metadata["silver_version"], metadata["max_len"] = state
    return metadata


def silver_metadata(settings: Settings, table: str, silver_app_id: str, bronze_table: str) -> dict[str, Any]:
    """``table_metadata`` of silver plus the bronze version it has caught up with."""
    metadata = table_metadata(settings, table)
    metadata["bronze_version"] = committed_version(settings.table_uri(table), silver_app_id)
    metadata["bronze_uri"] = dg.MetadataValue.path(settings.table_uri(bronze_table))
    return metadata


def newest_event_ms(settings: Settings, table: str) -> int | None:
    """The largest ``ts`` in lake table ``table`` (from the files' statistics when they have them)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    uri = settings.table_uri(table)
    if not DeltaTable.is_deltatable(uri):
        return None
    delta = DeltaTable(uri)
    actions = pa.table(delta.get_add_actions(flatten=True))
    if "max.ts" in actions.column_names and actions.num_rows and actions.column("max.ts").null_count == 0:
        value = pc.max(actions.column("max.ts")).as_py()
    else:
        value = pc.max(delta.to_pyarrow_dataset().to_table(columns=["ts"]).column("ts")).as_py()
    return None if value is None else int(value)


def age_hours(epoch_ms: int) -> float:
    """Hours from ``epoch_ms`` until now."""
    return (time.time() * 1000 - epoch_ms) / 3_600_000

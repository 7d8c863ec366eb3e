"""Synthetic events written to silver/events as ingestion writes them, then the real feature build."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
from deltalake import write_deltalake

from infra.settings import Settings
from ingestion.lake_writer import silver_rows_of
from ingestion.schema import SILVER_TABLE

PARTITIONS = 4
START_MS = 1_700_000_000_000


def silver_table(events: Iterable[dict[str, Any]], first_offset: int = 0) -> pa.Table:
    """Silver rows of contract events (user's partition by key hash, offsets in event order)."""
    return silver_rows_of(events, first_offset, PARTITIONS)


def append_events(settings: Settings, events: Iterable[dict[str, Any]], first_offset: int = 0) -> None:
    """Append events to silver/events and bring the feature tables up to date (real build)."""
    from features.build import build

    rows = silver_table(events, first_offset)
    write_deltalake(settings.table_uri(SILVER_TABLE), rows, mode="append", partition_by=["event_date"])
    build(settings, incremental=True, log=lambda message: None)

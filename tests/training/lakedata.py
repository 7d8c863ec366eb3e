"""Synthetic events written to silver/events as ingestion writes them, then the real feature build."""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
from deltalake import write_deltalake

from infra.settings import Settings
from ingestion.schema import EVENT_ORDER, SILVER_SCHEMA, SILVER_TABLE

PARTITIONS = 4
EVENT_KEYS = ("event_id", "user_id", "item_id", "action", "ts", "dwell_ms", "surface")
START_MS = 1_700_000_000_000


def silver_table(events: Iterable[dict[str, Any]], first_offset: int = 0) -> pa.Table:
    """Silver rows of contract events (user's partition by key hash, offsets in event order)."""
    ingested = dt.datetime.now(dt.UTC)
    rows = []
    for offset, event in enumerate(events, start=first_offset):
        rows.append(
            {
                **{key: event.get(key) for key in EVENT_KEYS},
                "kafka_partition": zlib.crc32(event["user_id"].encode()) % PARTITIONS,
                "kafka_offset": offset,
                "ingested_at": ingested,
                "event_date": dt.datetime.fromtimestamp(event["ts"] / 1000, dt.UTC).date(),
            }
        )
    table = pa.Table.from_pylist(rows, schema=SILVER_SCHEMA)
    return table.sort_by([(column, "ascending") for column in EVENT_ORDER])


def append_events(settings: Settings, events: Iterable[dict[str, Any]], first_offset: int = 0) -> None:
    """Append events to silver/events and bring the feature tables up to date (real build)."""
    from features.build import build

    rows = silver_table(events, first_offset)
    write_deltalake(settings.table_uri(SILVER_TABLE), rows, mode="append", partition_by=["event_date"])
    build(settings, incremental=True, log=lambda message: None)

"""Small synthetic lakes for the workflow tests: silver rows written as ingestion writes them."""

from __future__ import annotations

import datetime as dt
import time
import uuid
import zlib
from typing import Any

import pyarrow as pa

from infra.settings import Settings
from ingestion.lake_writer import append_silver
from ingestion.schema import SILVER_SCHEMA, SILVER_TABLE
from ingestion.synthetic import SyntheticConfig, generate_events

EVENT_KEYS = ("event_id", "user_id", "item_id", "action", "ts", "dwell_ms", "surface")


def silver_rows(events: list[dict[str, Any]], first_offset: int = 0) -> pa.Table:
    """Silver rows of contract events (partition by user key hash, offsets in event order)."""
    ingested = dt.datetime.now(dt.UTC)
    rows = [
        {
            **{key: event.get(key) for key in EVENT_KEYS},
            "kafka_partition": zlib.crc32(event["user_id"].encode()) % 4,
            "kafka_offset": offset,
            "ingested_at": ingested,
            "event_date": dt.datetime.fromtimestamp(event["ts"] / 1000, dt.UTC).date(),
        }
        for offset, event in enumerate(events, start=first_offset)
    ]
    return pa.Table.from_pylist(rows, schema=SILVER_SCHEMA)


def clicks(users: int, per_user: int, ts_ms: int | None = None) -> list[dict[str, Any]]:
    """``per_user`` click events of each of ``users`` users, one second apart, ending at ``ts_ms``."""
    end = ts_ms or int(time.time() * 1000)
    events = []
    for user in range(users):
        for step in range(per_user):
            events.append(
                {
                    "event_id": f"e-{uuid.uuid4().hex}",
                    "user_id": f"u{user}",
                    "item_id": f"i{(user + step) % 50}",
                    "action": "click",
                    "ts": end - (per_user - step) * 1000,
                }
            )
    return events


def append_clicks(settings: Settings, users: int, per_user: int, ts_ms: int | None = None) -> int:
    """Append click events to silver/events; returns silver's new version."""
    return append_silver(settings.table_uri(SILVER_TABLE), silver_rows(clicks(users, per_user, ts_ms)))


def append_synthetic(settings: Settings, config: SyntheticConfig, first_offset: int = 0) -> int:
    """Append the synthetic events of ``config`` to silver/events; returns silver's new version."""
    events = list(generate_events(config))
    return append_silver(settings.table_uri(SILVER_TABLE), silver_rows(events, first_offset))

"""Synthetic events written to silver/events, then the real feature build; small training configs."""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
from deltalake import write_deltalake

from infra.settings import Settings
from ingestion.schema import EVENT_ORDER, SILVER_SCHEMA, SILVER_TABLE
from ingestion.synthetic import SyntheticConfig
from training.common.config import EncoderConfig
from training.retrieval.config import TrainConfig

PARTITIONS = 4
EVENT_KEYS = ("event_id", "user_id", "item_id", "action", "ts", "dwell_ms", "surface")
START_MS = 1_700_000_000_000
# 300 users, 1000 items in 20 clusters: small enough for about a second per epoch on 2
# cores, structured enough that sequence models beat popularity by far.
EVENTS = SyntheticConfig(users=300, items=1_000, events=30_000, clusters=20, seed=0, start_ms=START_MS)


def tiny_config(kind: str = "hstu", **overrides: object) -> TrainConfig:
    """A small model and short run that still learns the synthetic structure."""
    encoder = EncoderConfig(kind=kind, dim=32, max_len=50)
    return TrainConfig(encoder=encoder, **{"epochs": 6, "batch_size": 32, "patience": 0, **overrides})


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

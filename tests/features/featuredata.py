"""Hand-built silver events and feature tables for the features tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pyarrow as pa
from deltalake import write_deltalake

from features.tables import ITEM_VOCAB_SCHEMA, ITEM_VOCAB_TABLE, USER_SEQUENCES_SCHEMA, USER_SEQUENCES_TABLE
from infra.settings import Settings
from ingestion.lake_writer import append_silver as append_to_silver
from ingestion.lake_writer import as_silver
from ingestion.schema import SILVER_SCHEMA, SILVER_TABLE

Event = tuple[str, str, str, int]  # (user_id, item_id, action, ts)
Step = tuple[int, str, int]  # (item_index, action, ts)


def write_sequences(settings: Settings, users: dict[str, list[Step]], num_items: int, mode: str = "error") -> None:
    """Write item_vocab (items 1..num_items) and user_sequences from ``users``."""
    vocab = pa.table(
        {
            "item_id": [f"i{index}" for index in range(1, num_items + 1)],
            "item_index": list(range(1, num_items + 1)),
            "first_seen_ts": list(range(1, num_items + 1)),
        },
        schema=ITEM_VOCAB_SCHEMA,
    )
    write_deltalake(settings.table_uri(ITEM_VOCAB_TABLE), vocab, mode=mode)
    sequences = pa.table(
        {
            "user_id": list(users),
            "item_indices": [[step[0] for step in steps] for steps in users.values()],
            "actions": [[step[1] for step in steps] for steps in users.values()],
            "timestamps": [[step[2] for step in steps] for steps in users.values()],
        },
        schema=USER_SEQUENCES_SCHEMA,
    )
    write_deltalake(settings.table_uri(USER_SEQUENCES_TABLE), sequences, mode=mode)


def silver_rows(events: Iterable[Event], *, first_offset: int = 0, partition: int = 0) -> pa.Table:
    """Silver rows of ``events``, Kafka offsets in the given order (the tie-break of equal ts)."""
    rows = []
    for offset, (user_id, item_id, action, ts) in enumerate(events, start=first_offset):
        rows.append(
            {
                "event_id": f"e{partition}-{offset}",
                "user_id": user_id,
                "item_id": item_id,
                "action": action,
                "ts": ts,
                "dwell_ms": None,
                "surface": None,
                "kafka_partition": partition,
                "kafka_offset": offset,
                "ingested_at": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
                "event_date": dt.datetime.fromtimestamp(ts / 1000, dt.UTC).date(),
            }
        )
    return as_silver(pa.Table.from_pylist(rows, schema=SILVER_SCHEMA))


def append_silver(settings: Settings, rows: pa.Table) -> int:
    """Append ``rows`` to silver/events as ingestion does; the new version."""
    return append_to_silver(settings.table_uri(SILVER_TABLE), rows)


def table_rows(settings: Settings, name: str, key: str) -> list[dict]:
    """Every row of feature table ``name``, sorted by ``key``."""
    from deltalake import DeltaTable

    return sorted(DeltaTable(settings.table_uri(name)).to_pyarrow_table().to_pylist(), key=lambda row: row[key])


def sequences_by_item_id(settings: Settings) -> dict[str, tuple[list[str], list[str], list[int]]]:
    """user_sequences with item ids instead of indices: comparable across vocabularies."""
    item_of = {row["item_id"]: row for row in table_rows(settings, ITEM_VOCAB_TABLE, "item_index")}
    item_of = {row["item_index"]: item_id for item_id, row in item_of.items()}
    return {
        row["user_id"]: ([item_of[index] for index in row["item_indices"]], row["actions"], row["timestamps"])
        for row in table_rows(settings, USER_SEQUENCES_TABLE, "user_id")
    }

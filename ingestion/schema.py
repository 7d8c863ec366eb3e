"""The user-action event contract and the Arrow schemas of the ingestion Delta tables.

Kafka topic value (UTF-8 JSON), key = user_id::

    event_id  str, unique per event (producer-assigned)   required
    user_id   str                                          required
    item_id   str                                          required
    action    one of ACTIONS                               required
    ts        int epoch milliseconds                       required
    dwell_ms  int >= 0                                     optional
    surface   str                                          optional

Every later package reads events through these names; nothing else defines them.
"""

from __future__ import annotations

import pyarrow as pa

ACTIONS: tuple[str, ...] = ("impression", "click", "view", "like", "share", "purchase", "skip", "dislike")
"""Every action type. Their ids (ACTION_IDS) start at 1; 0 is padding in sequences."""

ACTION_IDS: dict[str, int] = {action: index + 1 for index, action in enumerate(ACTIONS)}
POSITIVE_ACTIONS: frozenset[str] = frozenset({"click", "view", "like", "share", "purchase"})
"""Actions that say the user wanted the item: targets of next-item prediction."""
NEGATIVE_ACTIONS: frozenset[str] = frozenset({"skip", "dislike"})
"""Negative feedback: enters retrieval training as a not-to-recommend term."""
# "impression" is neutral: the item was shown, the user did nothing with it.

REQUIRED_FIELDS: tuple[str, ...] = ("event_id", "user_id", "item_id", "action", "ts")
OPTIONAL_FIELDS: tuple[str, ...] = ("dwell_ms", "surface")

BRONZE_TABLE = "bronze/events"
QUARANTINE_TABLE = "quarantine/events"
SILVER_TABLE = "silver/events"

_UTC_MICROS = pa.timestamp("us", tz="UTC")

EVENT_FIELDS: list[pa.Field] = [
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("action", pa.string(), nullable=False),
    pa.field("ts", pa.int64(), nullable=False),
    pa.field("dwell_ms", pa.int64(), nullable=True),
    pa.field("surface", pa.string(), nullable=True),
]

KAFKA_FIELDS: list[pa.Field] = [
    pa.field("kafka_partition", pa.int32(), nullable=False),
    pa.field("kafka_offset", pa.int64(), nullable=False),
    pa.field("ingested_at", _UTC_MICROS, nullable=False),
]

BRONZE_SCHEMA = pa.schema([*EVENT_FIELDS, *KAFKA_FIELDS, pa.field("event_date", pa.date32(), nullable=False)])
"""bronze/events: every valid Kafka record exactly once; partitioned by event_date (UTC day of ts)."""

SILVER_SCHEMA = BRONZE_SCHEMA
"""silver/events: bronze deduplicated by event_id (the earliest Kafka record wins), rows
ordered by (user_id, ts, kafka_partition, kafka_offset); same columns as bronze."""

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("raw", pa.binary(), nullable=True),
        pa.field("raw_key", pa.binary(), nullable=True),
        pa.field("kafka_partition", pa.int32(), nullable=False),
        pa.field("kafka_offset", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("ingested_at", _UTC_MICROS, nullable=False),
    ]
)
"""quarantine/events: every invalid record exactly once, with a reason a person can read."""

EVENT_ORDER: tuple[str, ...] = ("user_id", "ts", "kafka_partition", "kafka_offset")
"""Deterministic event order: equal timestamps fall back to Kafka order (a user's events
share one partition because the key is user_id)."""

KAFKA_RECORD_SCHEMA = pa.schema(
    [
        pa.field("key", pa.binary(), nullable=True),
        pa.field("value", pa.binary(), nullable=True),
        pa.field("partition", pa.int32(), nullable=True),
        pa.field("offset", pa.int64(), nullable=True),
        pa.field("timestamp", _UTC_MICROS, nullable=True),
    ]
)
"""Raw Kafka records, as the Kafka Spark source yields them and validation reads them
(all fields nullable, as Spark hands them over)."""

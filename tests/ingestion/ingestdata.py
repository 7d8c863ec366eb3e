"""Helpers of the ingestion tests: fresh topics and lakes, known records, table contents."""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable

from infra.settings import Settings, get_settings
from ingestion.malformed import malformed_kinds
from ingestion.producer import OutRecord, encode_event, open_producer
from ingestion.synthetic import SyntheticConfig, generate_events


def fresh_settings(tmp_path: Path, partitions: int = 3, **overrides: object) -> Settings:
    """Settings naming a new topic (created now) and a lake of its own under ``tmp_path``."""
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"t-{uuid.uuid4().hex[:10]}"
    settings = get_settings(topic=topic, lake_uri=str(tmp_path / "lake"), **overrides)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap, request_timeout_ms=10_000)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()
    return settings


def env_of(settings: Settings, test_env: dict[str, str]) -> dict[str, str]:
    """Environment for a `streamrec` subprocess using ``settings``' topic and lake."""
    import os

    return {**os.environ, **test_env, "STREAMREC_TOPIC": settings.kafka.topic, "STREAMREC_LAKE_URI": settings.lake_root}


@dataclass(frozen=True)
class Sent:
    """A record that was sent and where it landed."""

    record: OutRecord
    partition: int
    offset: int


def send(settings: Settings, records: list[OutRecord]) -> list[Sent]:
    """Send ``records`` to the settings' topic; where each one landed."""
    producer = open_producer(settings)
    try:
        futures = [producer.send(settings.kafka.topic, key=r.key, value=r.value) for r in records]
        producer.flush()
        metadata = [future.get(timeout=30) for future in futures]
    finally:
        producer.close()
    return [Sent(record, m.partition, m.offset) for record, m in zip(records, metadata, strict=True)]


def events(count: int, seed: int = 1, users: int = 40) -> list[dict]:
    """Synthetic contract events that end an hour before now."""
    start = int(time.time() * 1000) - 3 * 86_400_000
    return list(
        generate_events(SyntheticConfig(users=users, items=300, events=count, seed=seed, start_ms=start, span_days=1))
    )


def mixed_records(settings: Settings, count: int, seed: int = 1, bad_every: int = 7) -> list[OutRecord]:
    """Valid records with every malformed kind taking turns every ``bad_every``-th record."""
    rng = random.Random(seed)
    kinds = malformed_kinds(settings.ingest.max_event_bytes, int(time.time() * 1000))
    names = list(kinds)
    out = []
    for index, event in enumerate(events(count, seed)):
        if index % bad_every == bad_every - 1:
            name = names[(index // bad_every) % len(names)]
            out.append(OutRecord(event["user_id"].encode(), kinds[name](event, rng), name))
        else:
            out.append(encode_event(event))
    return out


def table(uri: str) -> pa.Table:
    """The whole Delta table at ``uri`` (empty table when there is none)."""
    if not DeltaTable.is_deltatable(uri):
        return pa.table({})
    return DeltaTable(uri).to_pyarrow_table()


def coordinates(rows: pa.Table) -> list[tuple[int, int]]:
    """Sorted (kafka_partition, kafka_offset) of ``rows``."""
    if rows.num_rows == 0:
        return []
    return sorted(zip(rows["kafka_partition"].to_pylist(), rows["kafka_offset"].to_pylist(), strict=True))

"""Helpers of the online-history tests: fresh topics, known records, and the histories a full
recompute from every valid, distinct event gives."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from infra.polling import wait_until
from infra.settings import Settings, get_settings
from ingestion.producer import OutRecord, encode_event, open_producer
from ingestion.schema import ACTIONS
from serving.history.snapshot import HistoryEvent


def new_topic(settings: Settings, partitions: int) -> str:
    """Create a topic with a new name on the settings' broker; its name."""
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"h-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap, request_timeout_ms=10_000)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()
    return topic


def recreate_topic(settings: Settings, partitions: int) -> None:
    """Delete the settings' topic and create it again with ``partitions`` partitions (this
    broker cannot add partitions to a topic; a recreated one is how it gets more).

    Until the create succeeds, both are tried again: a running tail's metadata request between
    the two can auto-create the topic (with the broker's default partitions), and a loaded
    broker may still be deleting it; either answers TopicAlreadyExistsError."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap, request_timeout_ms=10_000)

    def recreated() -> bool:
        try:
            admin.delete_topics([settings.kafka.topic])
        except UnknownTopicOrPartitionError:
            pass  # deleted by the previous try
        try:
            admin.create_topics([NewTopic(settings.kafka.topic, partitions, 1)])
        except TopicAlreadyExistsError:
            return False
        return True

    try:
        wait_until(recreated, 30, interval_s=0.2, what=f"topic {settings.kafka.topic} recreated")
    finally:
        admin.close()


def create_topic(settings: Settings, partitions: int) -> None:
    """Create the settings' topic."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap, request_timeout_ms=10_000)
    try:
        admin.create_topics([NewTopic(settings.kafka.topic, partitions, 1)])
    finally:
        admin.close()


def settings_with_topic(lake: str, partitions: int, **overrides: Any) -> Settings:
    """Settings naming a new topic (created now) and the lake at ``lake``."""
    base = get_settings()
    return get_settings(topic=new_topic(base, partitions), lake_uri=lake, **overrides)


@dataclass(frozen=True)
class Sent:
    """A record that was sent and where it landed."""

    record: OutRecord
    partition: int
    offset: int

    @property
    def event(self) -> dict[str, Any] | None:
        """The event of a valid record (None for a malformed one)."""
        return json.loads(self.record.value) if self.record.kind is None and self.record.value else None


def send(settings: Settings, records: Iterable[OutRecord], partition: int | None = None) -> list[Sent]:
    """Send ``records`` in order (to ``partition``, default by key); where each one landed."""
    records = list(records)
    producer = open_producer(settings)
    try:
        futures = [producer.send(settings.kafka.topic, key=r.key, value=r.value, partition=partition) for r in records]
        producer.flush()
        metadata = [future.get(timeout=30) for future in futures]
    finally:
        producer.close()
    return [Sent(record, m.partition, m.offset) for record, m in zip(records, metadata, strict=True)]


def make_events(
    rng: random.Random, prefix: str, count: int, users: list[str], items: list[str], span_s: int
) -> list[dict[str, Any]]:
    """Events in random ts order over ``span_s`` whole seconds a day ago (many equal ts)."""
    base = (int(time.time()) - 86_400) * 1000
    return [
        {
            "event_id": f"{prefix}-{index}",
            "user_id": rng.choice(users),
            "item_id": rng.choice(items),
            "action": rng.choice(ACTIONS),
            "ts": base + rng.randrange(span_s) * 1000,
        }
        for index in range(count)
    ]


def malformed(user_id: str, event_id: str) -> OutRecord:
    """A record validation rejects (cut-off JSON), keyed like a real one."""
    return OutRecord(user_id.encode(), f'{{"event_id":"{event_id}","user_id":"{user_id}"'.encode(), "not_json")


def click(user_id: str, item_id: str, event_id: str, ts: int | None = None) -> OutRecord:
    """A valid click record (ts default now)."""
    ts = int(time.time() * 1000) if ts is None else ts
    return encode_event({"event_id": event_id, "user_id": user_id, "item_id": item_id, "action": "click", "ts": ts})


def distinct_valid(sent: list[Sent]) -> list[Sent]:
    """The valid records whose event_id was not sent before (send order = Kafka order per user)."""
    seen: set[str] = set()
    out = []
    for record in sent:
        event = record.event
        if event is not None and event["event_id"] not in seen:
            seen.add(event["event_id"])
            out.append(record)
    return out


@dataclass(frozen=True)
class Expected:
    """A user's history by full recompute, and their partition."""

    events: tuple[HistoryEvent, ...]
    partition: int


def expected_histories(sent: list[Sent], max_len: int) -> dict[str, Expected]:
    """Per user the last ``max_len`` valid, distinct events by (ts, partition, offset)."""
    by_user: dict[str, list[Sent]] = {}
    for record in distinct_valid(sent):
        by_user.setdefault(record.event["user_id"], []).append(record)  # type: ignore[index]
    out = {}
    for user, records in by_user.items():
        ordered = sorted(records, key=lambda s: (s.event["ts"], s.partition, s.offset))  # type: ignore[index]
        window = ordered[-max_len:]
        events = tuple(HistoryEvent(s.event["item_id"], s.event["action"], s.event["ts"]) for s in window)  # type: ignore[index]
        out[user] = Expected(events, records[-1].partition)
    return out


def end_offsets(sent: list[Sent]) -> dict[int, int]:
    """{partition: last offset sent + 1}."""
    ends: dict[int, int] = {}
    for record in sent:
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    return ends


def eventually(check: Any, timeout_s: float = 20.0) -> bool:
    """Whether ``check()`` becomes true within ``timeout_s`` (polled every 50 ms)."""
    try:
        return bool(wait_until(check, timeout_s, interval_s=0.05, what="the check"))
    except TimeoutError:
        return False

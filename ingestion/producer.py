"""Sending user-action records to Kafka: rate control, progress, delivery accounting.

Records are keyed by user_id (the contract), so a user's events share one partition and
keep their order. The producer batches generously (large batches, a short linger, no
compression) and waits for every send to be acknowledged before it reports.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from infra.errors import StreamrecError
from infra.settings import Settings
from ingestion.malformed import malformed_kinds


@dataclass(frozen=True)
class OutRecord:
    """One Kafka record to send; ``kind`` names the malformation of an injected bad record."""

    key: bytes | None
    value: bytes | None
    kind: str | None = None


@dataclass
class ProduceSummary:
    """What a produce run sent (``failed`` counts records the broker never acknowledged)."""

    topic: str
    sent: int = 0
    valid: int = 0
    invalid: int = 0
    failed: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    invalid_kinds: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        """One line of JSON."""
        return json.dumps(asdict(self), separators=(",", ":"))


def encode_event(event: dict[str, Any]) -> OutRecord:
    """A valid contract event as a Kafka record (key = user_id, value = compact UTF-8 JSON)."""
    return OutRecord(str(event["user_id"]).encode(), json.dumps(event, separators=(",", ":")).encode())


def with_bad_records(
    events: Iterable[dict[str, Any]], fraction: float, settings: Settings, seed: int = 0
) -> Iterator[OutRecord]:
    """Records of ``events``, each replaced with probability ``fraction`` by a malformed record.

    Malformed kinds take turns, so every kind appears once enough records are bad.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("the bad fraction must lie in [0, 1]")
    rng = random.Random(seed ^ 0x5EED)
    kinds = malformed_kinds(settings.ingest.max_event_bytes, int(time.time() * 1000))
    names = list(kinds)
    turn = 0
    for event in events:
        if fraction and rng.random() < fraction:
            name = names[turn % len(names)]
            turn += 1
            yield OutRecord(str(event["user_id"]).encode(), kinds[name](event, rng), name)
        else:
            yield encode_event(event)


class ProduceError(StreamrecError):
    """The broker cannot be reached."""


def open_producer(settings: Settings):  # -> kafka.KafkaProducer
    """A KafkaProducer tuned for throughput; every record is acknowledged by the leader."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        return KafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap,
            acks="all",
            linger_ms=20,
            batch_size=1 << 20,
            max_request_size=8 << 20,
            compression_type=None,
            request_timeout_ms=30_000,
            bootstrap_timeout_ms=5_000,
        )
    except KafkaError as error:
        raise ProduceError(
            f"cannot reach Kafka at {settings.kafka.bootstrap}: {error} (is it up? `streamrec up kafka`)"
        ) from error


def produce(
    records: Iterable[OutRecord],
    settings: Settings,
    *,
    rate: float | None = None,
    total: int | None = None,
    description: str = "producing",
    show_progress: bool = True,
) -> ProduceSummary:
    """Send ``records`` to ``settings.kafka.topic``, at most ``rate`` per second (None: as fast as possible)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from infra.console import make_console

    summary = ProduceSummary(topic=settings.kafka.topic)
    kinds: Counter[str] = Counter()
    failures: list[BaseException] = []
    producer = open_producer(settings)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>10,.0f} events/s"), TimeElapsedColumn(),
        console=make_console(stderr=True), disable=not show_progress,
    )  # fmt: skip
    start = time.perf_counter()
    try:
        with progress:
            task = progress.add_task(description, total=total, rate=0.0)
            for record in records:
                if rate:
                    ahead = summary.sent / rate - (time.perf_counter() - start)
                    if ahead > 0:
                        time.sleep(ahead)
                future = producer.send(settings.kafka.topic, key=record.key, value=record.value)
                future.add_errback(failures.append)
                summary.sent += 1
                if record.kind:
                    kinds[record.kind] += 1
                if summary.sent % 2_000 == 0:
                    elapsed = time.perf_counter() - start
                    progress.update(task, completed=summary.sent, rate=summary.sent / elapsed)
            producer.flush()
            elapsed = time.perf_counter() - start
            progress.update(task, completed=summary.sent, rate=summary.sent / max(elapsed, 1e-9))
    finally:
        producer.close()
    summary.seconds = round(time.perf_counter() - start, 3)
    summary.rate = round(summary.sent / max(summary.seconds, 1e-9), 1)
    summary.invalid = sum(kinds.values())
    summary.valid = summary.sent - summary.invalid
    summary.invalid_kinds = dict(sorted(kinds.items()))
    summary.failed = len(failures)
    return summary

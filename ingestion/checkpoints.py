"""The ingest stream's checkpoint: where it lives, its exclusive lock, starting over on an
empty topic, and the topic's ends it is judged against."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from infra.settings import Settings
from ingestion.errors import IngestError


def checkpoint_path(settings: Settings) -> Path:
    """Where the ingest stream of ``settings.kafka.topic`` keeps its Spark checkpoint."""
    return settings.checkpoint_dir / f"ingest-{settings.kafka.topic}"


@contextmanager
def exclusive(checkpoint: Path) -> Iterator[None]:
    """Hold the stream's exclusive lock beside ``checkpoint`` (released by the OS even on kill -9)."""
    lock_file = checkpoint.with_name(checkpoint.name + ".lock")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise IngestError(f"another `streamrec ingest` is running on {checkpoint}") from error
        yield


def set_aside_checkpoint_of_empty_topic(settings: Settings) -> Path | None:
    """Let the stream start over when its topic holds no records but it has a checkpoint.

    The local broker keeps topics in memory: after a restart the topic is empty and the
    checkpoint's offsets point past its end, which stops the stream. With no record on the
    topic, starting over skips nothing; the new query's app-transaction ids keep bronze
    exactly-once and silver drops re-sent events. The checkpoint is renamed, not deleted.
    Returns where it went, or None when there was nothing to do.
    """
    checkpoint = checkpoint_path(settings)
    if sum(topic_ends(settings).values()) or not checkpoint.exists():
        return None
    kept = checkpoint.with_name(f"{checkpoint.name}.before-{time.strftime('%Y%m%d-%H%M%S')}")
    with exclusive(checkpoint):
        checkpoint.rename(kept)
    return kept


def topic_ends(settings: Settings) -> dict[str, int]:
    """{partition: high watermark} of the topic; a plain IngestError without broker or topic."""
    from kafka.errors import KafkaError

    from ingestion.kafka_client import KafkaSourceError, high_watermarks, kafka_consumer

    try:
        consumer = kafka_consumer(settings.kafka.bootstrap, bootstrap_timeout_ms=5_000)
    except (KafkaError, OSError, ValueError) as error:
        raise IngestError(
            f"cannot reach Kafka at {settings.kafka.bootstrap}: {error} (is it up? `streamrec up kafka`)"
        ) from error
    try:
        return high_watermarks(consumer, settings.kafka.topic)
    except KafkaSourceError as error:
        raise IngestError(str(error)) from error
    finally:
        consumer.close()

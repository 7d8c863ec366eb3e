"""Plain Kafka helpers, without pyspark: a group-less consumer, the topic's high watermarks and
kafka-python records as Arrow rows.

The Spark source (``ingestion.kafka_source``) plans and reads with them, and so do processes
that must not import pyspark: the serving history's tail, the checkpoint checks, benchmarks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from infra.errors import StreamrecError
from infra.polling import wait_until
from ingestion.schema import KAFKA_RECORD_SCHEMA

_WATERMARK_WAIT_S = 5.0


class KafkaSourceError(StreamrecError):
    """The topic cannot be read as the stream's offsets say (missing topic, lost records)."""


def kafka_consumer(bootstrap: str, **config: Any):  # -> kafka.KafkaConsumer
    """A group-less consumer for explicit assignment, with large fetches; never skips lost offsets."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="none",  # a position that no longer exists is an error, never a skip
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
        **config,
    )


def high_watermarks(consumer: Any, topic: str) -> dict[str, int]:
    """{partition: offset after the last record} of every partition of ``topic``, from fetch responses.

    ListOffsets(latest) may lag behind the end (Tansu names the last batch's base offset), so
    each partition is fetched from there and the high watermark of the response is used.
    """
    from kafka import TopicPartition

    consumer.topics()  # a metadata request: finds partitions added since the last call
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise KafkaSourceError(f"topic {topic} does not exist")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign([])
    consumer.assign(tps)  # fresh partition state: no high watermark left from an earlier call
    listed = consumer.end_offsets(tps)
    ends = dict(listed)
    for tp in tps:
        consumer.seek(tp, listed[tp])

    def fetched() -> bool:
        for tp, records in consumer.poll(timeout_ms=200).items():
            ends[tp] = max(ends[tp], records[-1].offset + 1)
        return all(consumer.highwater(tp) is not None for tp in tps)

    with contextlib.suppress(TimeoutError):  # a partition no fetch answered for keeps its listed end
        wait_until(fetched, _WATERMARK_WAIT_S, interval_s=0, what=f"fetch responses from every partition of {topic}")
    for tp in tps:
        ends[tp] = max(ends[tp], consumer.highwater(tp) or 0)
    return {str(tp.partition): end for tp, end in ends.items()}


def records_batch(records: Sequence[Any], partition: int) -> pa.RecordBatch:
    """kafka-python ConsumerRecords of one partition as KAFKA_RECORD_SCHEMA rows (what validation reads)."""
    n = len(records)
    return pa.RecordBatch.from_arrays(
        [
            pa.array([r.key for r in records], pa.binary()),
            pa.array([r.value for r in records], pa.binary()),
            pa.array([partition] * n, pa.int32()),
            pa.array([r.offset for r in records], pa.int64()),
            pa.array([r.timestamp * 1000 for r in records], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        ],
        schema=KAFKA_RECORD_SCHEMA,
    )

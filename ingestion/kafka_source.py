"""A PySpark streaming data source for Kafka, built on kafka-python.

pyspark ships no Kafka connector jar here, so this Python DataSource reads the topic::

    spark.dataSource.register(KafkaDataSource)
    spark.readStream.format("kafka_python").option("bootstrap", "127.0.0.1:9092")
        .option("topic", "user-actions").load()

It is registered as ``kafka_python`` because Spark reserves the name ``kafka`` for its own
connector: registering a Python source under it fails with KAFKA_DATA_SOURCE_NOT_ENABLED.

Rows: ``key`` binary, ``value`` binary, ``partition`` int, ``offset`` bigint, ``timestamp``
(ingestion.schema.KAFKA_RECORD_SCHEMA). Options:

* ``bootstrap`` (required), ``topic`` (required);
* ``startingOffsets``: ``earliest`` (default) or ``latest``, for a stream without checkpoint;
* ``maxRecordsPerTrigger``: most records per micro-batch, shared among partitions by lag;
* ``minPartitions``: split large partition ranges so a micro-batch has about this many
  Spark tasks (default 0: one task per Kafka partition);
* ``pollTimeoutMs``: how long a read may wait for the broker without progress (default 60000).

The stream's offset is ``{"<partition>": <next offset>}``; Spark keeps it in the query's
checkpoint, nothing is committed to Kafka (no consumer group). Partitions are assigned
explicitly; partitions added to the topic are found on the next trigger and read from
their start. The end of a partition is taken from the high watermark of a fetch response,
not from ListOffsets, because some brokers (Tansu) answer ListOffsets(latest) with the
base offset of the last record batch. Each Kafka partition's range in a micro-batch is one
Spark input partition, and ``read()`` yields Arrow record batches.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadLimit, ReadMaxRows, SupportsTriggerAvailableNow

from ingestion.kafka_client import KafkaSourceError, high_watermarks, kafka_consumer, records_batch

SPARK_SCHEMA = "key binary, value binary, partition int, offset bigint, timestamp timestamp"
SOURCE_NAME = "kafka_python"
_ROWS_PER_ARROW_BATCH = 20_000
_MIN_SPLIT = 10_000  # records: smaller ranges are not split further


@dataclass(frozen=True)
class KafkaRange(InputPartition):
    """Records [start, end) of one Kafka partition."""

    bootstrap: str
    topic: str
    partition: int
    start: int
    end: int
    poll_timeout_ms: int


class KafkaDataSource(DataSource):
    """Streaming source ``kafka_python`` (see the module docstring for its options)."""

    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def schema(self) -> str:
        return SPARK_SCHEMA

    def streamReader(self, schema: Any) -> KafkaStreamReader:
        return KafkaStreamReader({name.lower(): value for name, value in self.options.items()})


class KafkaStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Plans micro-batches from high watermarks; reads each partition range with its own consumer."""

    def __init__(self, options: dict[str, str]) -> None:
        """``options`` with lower-case names (Spark hands them over case-insensitively)."""
        for required in ("bootstrap", "topic"):
            if not options.get(required):
                raise ValueError(f"the {SOURCE_NAME} source needs the option {required!r}")
        self.bootstrap = options["bootstrap"]
        self.topic = options["topic"]
        self.starting = options.get("startingoffsets", "earliest")
        if self.starting not in ("earliest", "latest"):
            raise ValueError(f"startingOffsets must be earliest or latest, not {self.starting!r}")
        max_records = options.get("maxrecordspertrigger")
        self.max_records = int(max_records) if max_records else None
        self.poll_timeout_ms = int(options.get("polltimeoutms", "60000"))
        self.min_partitions = int(options.get("minpartitions", "0"))
        self._consumer: Any = None
        self._target: dict[str, int] | None = None  # set by Trigger.AvailableNow

    # --- planning (runs in the driver's source process) ---------------------------

    def initialOffset(self) -> dict[str, int]:
        ends = self._high_watermarks()
        if self.starting == "latest":
            return ends
        beginnings = self._consumer.beginning_offsets([self._tp(p) for p in ends])
        return {str(tp.partition): offset for tp, offset in beginnings.items()}

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.max_records) if self.max_records else ReadAllAvailable()

    def prepareForTriggerAvailableNow(self) -> None:
        self._target = self._high_watermarks()

    def latestOffset(self, start: dict[str, int], limit: ReadLimit) -> dict[str, int]:
        ends = dict(self._target) if self._target is not None else self._high_watermarks()
        for partition, offset in start.items():
            end = ends.setdefault(partition, offset)
            if end < offset:
                raise KafkaSourceError(
                    f"partition {partition} of topic {self.topic} ends at offset {end}, before the stream's"
                    f" offset {offset}: the topic was recreated or truncated. Records would be lost;"
                    " move the stream's checkpoint aside to start again (bronze keeps its rows;"
                    " silver drops re-sent events)."
                )
        if isinstance(limit, ReadMaxRows):
            ends = _share_limit(start, ends, limit.max_rows)
        elif self._target is not None and self.max_records:
            # Under Trigger.AvailableNow Spark passes ReadAllAvailable; reaching the target
            # in several bounded batches keeps memory flat and is what the option asks for.
            ends = _share_limit(start, ends, self.max_records)
        return ends

    def partitions(self, start: dict[str, int], end: dict[str, int]) -> list[KafkaRange]:
        ranges = [(int(p), start.get(p, 0), stop) for p, stop in end.items() if stop > start.get(p, 0)]
        total = sum(stop - first for _, first, stop in ranges)
        out = []
        for partition, first, stop in sorted(ranges):
            # Split big ranges so a batch has about minPartitions tasks (all cores busy, balanced).
            pieces = max(1, min(round(self.min_partitions * (stop - first) / total), (stop - first) // _MIN_SPLIT))
            bounds = [first + (stop - first) * i // pieces for i in range(pieces + 1)]
            out += [
                KafkaRange(self.bootstrap, self.topic, partition, a, b, self.poll_timeout_ms)
                for a, b in itertools.pairwise(bounds)
            ]
        return out

    def commit(self, end: dict[str, int]) -> None:
        """Offsets live in Spark's checkpoint; nothing to tell Kafka."""

    def stop(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    # --- reading (runs in executors) -------------------------------------------

    def read(self, partition: KafkaRange) -> Iterator[pa.RecordBatch]:  # type: ignore[override]
        return read_range(partition)

    # --- helpers ---------------------------------------------------------------

    def _tp(self, partition: str | int):  # -> kafka.TopicPartition
        from kafka import TopicPartition

        return TopicPartition(self.topic, int(partition))

    def _high_watermarks(self) -> dict[str, int]:
        """{partition: end offset} of every current partition of the topic."""
        if self._consumer is None:
            self._consumer = kafka_consumer(self.bootstrap)
        return high_watermarks(self._consumer, self.topic)


def _share_limit(start: dict[str, int], ends: dict[str, int], max_rows: int) -> dict[str, int]:
    """Ends that give a micro-batch exactly ``max_rows`` records (when more wait), shared
    among partitions in proportion to their lag (largest remainders get the leftovers)."""
    lags = {p: end - start.get(p, 0) for p, end in ends.items()}
    total = sum(lags.values())
    if total <= max_rows:
        return ends
    shares = {p: lag * max_rows // total for p, lag in lags.items()}
    leftover = max_rows - sum(shares.values())
    for p in sorted(lags, key=lambda p: lags[p] * max_rows % total, reverse=True)[:leftover]:
        shares[p] += 1
    return {p: start.get(p, 0) + shares[p] for p in ends}


def read_range(part: KafkaRange) -> Iterator[pa.RecordBatch]:
    """The records of ``part`` as Arrow record batches (KAFKA_RECORD_SCHEMA)."""
    from kafka import TopicPartition
    from kafka.errors import KafkaError

    tp = TopicPartition(part.topic, part.partition)
    consumer = kafka_consumer(part.bootstrap)
    try:
        consumer.assign([tp])
        consumer.seek(tp, part.start)
        position = part.start
        last_progress = time.monotonic()
        while position < part.end:
            try:
                polled = consumer.poll(timeout_ms=500, max_records=_ROWS_PER_ARROW_BATCH)
            except KafkaError as error:
                raise KafkaSourceError(
                    f"cannot read {part.topic}[{part.partition}] at offset {position}: {error}"
                ) from error
            records = [r for r in polled.get(tp, ()) if r.offset < part.end]
            if records:
                last_progress = time.monotonic()
                position = records[-1].offset + 1
                yield records_batch(records, part.partition)
            else:
                position = max(position, consumer.position(tp))
                if time.monotonic() - last_progress > part.poll_timeout_ms / 1000:
                    raise KafkaSourceError(
                        f"no records from {part.topic}[{part.partition}] at offset {position} (expected up to"
                        f" {part.end}) for {part.poll_timeout_ms} ms"
                    )
    finally:
        consumer.close()

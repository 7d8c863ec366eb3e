"""`streamrec ingest`: Kafka -> Spark Structured Streaming -> bronze and quarantine -> silver.

Each micro-batch (``foreachBatch``) is collected as Arrow, validated in bulk, and appended
to ``bronze/events`` (valid events, partitioned by event_date) and ``quarantine/events``
(invalid records with a reason), each append recording the micro-batch id as a Delta app
transaction of this stream. Then silver catches up with bronze. Spark writes the batch's
offsets to the checkpoint before the batch and its commit after it, so after a crash the
batch is replayed with the same records, and the app transactions make the replay write
only what the crash prevented. See docs/ingestion.md.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from infra.lake import append_once
from infra.polling import wait_until
from infra.settings import Settings
from ingestion.checkpoints import checkpoint_path, exclusive, topic_ends
from ingestion.errors import IngestError, error_digest
from ingestion.lake_writer import PARTITION_BY, SilverMaintainer, SilverUpdate
from ingestion.schema import BRONZE_TABLE, QUARANTINE_TABLE, SILVER_TABLE
from ingestion.validation import ValidationLimits, validate_records

# kafka-python's errors when the broker went away (a query failure naming none is checked by asking the broker)
BROKER_LOST = ("KafkaConnectionError", "NoBrokersAvailable", "KafkaTimeoutError", "NodeNotReadyError")
RECONNECT_FIRST_S = 1.0  # a continuous stream's first wait for a lost broker, doubled up to RECONNECT_MAX_S
RECONNECT_MAX_S = 30.0


@dataclass
class IngestStats:
    """Totals of one `streamrec ingest` run."""

    batches: int = 0
    records: int = 0
    valid: int = 0
    invalid: int = 0
    silver_added: int = 0
    seconds: float = 0.0

    def to_json(self) -> str:
        """One line of JSON, with the average rate."""
        rate = self.records / self.seconds if self.seconds else 0.0
        return json.dumps({**asdict(self), "records_per_s": round(rate, 1)}, separators=(",", ":"))


@dataclass(frozen=True)
class BatchReport:
    """What one micro-batch did and how long each step took (monotonic clock).

    ``silver_added`` counts the rows of the silver catch-up that finished meanwhile.
    """

    batch_id: int
    records: int
    valid: int
    invalid: int
    silver_added: int
    started: float
    read_s: float
    validate_s: float
    write_s: float

    @property
    def seconds(self) -> float:
        return self.read_s + self.validate_s + self.write_s

    def __str__(self) -> str:
        return (
            f"batch {self.batch_id}: {self.records:,} records in {self.seconds:.1f} s "
            f"({self.records / max(self.seconds, 1e-9):,.0f}/s): bronze +{self.valid:,}, "
            f"quarantine +{self.invalid:,}, silver +{self.silver_added:,} (read {self.read_s:.1f} s, "
            f"validate {self.validate_s:.1f} s, write {self.write_s:.1f} s)"
        )


Report = Callable[["BatchReport | str"], None]


class BatchWriter:
    """The ``foreachBatch`` function: validate, append once to bronze and quarantine, catch silver up.

    Silver catches up in a background thread, one catch-up at a time, while Spark reads the
    next micro-batch: silver is derived from bronze alone (and crash-safe on its own), so the
    batch does not wait for it. ``finish`` waits for the last catch-up.
    """

    def __init__(self, settings: Settings, checkpoint: Path, report: Report) -> None:
        self.limits = ValidationLimits.from_settings(settings.ingest)
        self.bronze_uri = settings.table_uri(BRONZE_TABLE)
        self.quarantine_uri = settings.table_uri(QUARANTINE_TABLE)
        self.silver = SilverMaintainer(self.bronze_uri, settings.table_uri(SILVER_TABLE))
        self.checkpoint = checkpoint
        self.report = report
        self.stats = IngestStats()
        self._app_id: str | None = None
        self._started = time.monotonic()
        self._silver_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="silver")
        self._silver_run: Future[SilverUpdate] | None = None

    @property
    def app_id(self) -> str:
        """App-transaction id of this stream: one per checkpoint (Spark's query id lives there)."""
        if self._app_id is None:
            query_id = json.loads((self.checkpoint / "metadata").read_text())["id"]
            self._app_id = f"streamrec-ingest-{query_id}"
        return self._app_id

    def __call__(self, batch: Any, batch_id: int) -> None:
        clock = [time.monotonic()]

        def lap() -> float:
            clock.append(time.monotonic())
            return clock[-1] - clock[-2]

        records = batch.toArrow()
        read_s = lap()
        result = validate_records(records, self.limits)
        validate_s = lap()
        if result.valid.num_rows:
            append_once(self.bronze_uri, result.valid, self.app_id, batch_id, PARTITION_BY)
        if result.invalid.num_rows:
            append_once(self.quarantine_uri, result.invalid, self.app_id, batch_id)
        write_s = lap()
        done = BatchReport(
            batch_id, records.num_rows, result.valid.num_rows, result.invalid.num_rows, self._start_silver(),
            clock[0], read_s, validate_s, write_s,
        )  # fmt: skip
        stats = self.stats
        stats.batches += 1
        stats.records += done.records
        stats.valid += done.valid
        stats.invalid += done.invalid
        stats.seconds = round(time.monotonic() - self._started, 3)
        self.report(done)

    def _start_silver(self) -> int:
        """Start a silver catch-up unless one runs; rows the finished one added (its errors raise here)."""
        added = 0
        if self._silver_run is not None:
            if not self._silver_run.done():
                return 0
            added = self._silver_run.result().rows_added
            self.stats.silver_added += added
        self._silver_run = self._silver_thread.submit(self.silver.catch_up)
        return added

    def finish(self) -> None:
        """Wait for the running silver catch-up, then bring silver up to the latest bronze."""
        if self._silver_run is not None:
            self.stats.silver_added += self._silver_run.result().rows_added
            self._silver_run = None
        self._silver_thread.shutdown()
        self.stats.silver_added += self.silver.catch_up().rows_added


def run_ingest(
    settings: Settings,
    *,
    until_idle: bool = False,
    duration_s: float | None = None,
    report: Report = print,
) -> IngestStats:
    """Run the ingest stream until idle (everything at the high watermarks is in bronze
    and silver), for ``duration_s`` seconds, or until interrupted. A continuous stream that
    loses the broker reconnects with backoff (reporting each try) and goes on from its
    checkpoint; a topic that came back shorter (a memory broker restarted) stops it."""
    from infra.spark import spark_session
    from ingestion.kafka_source import KafkaDataSource

    topic_ends(settings)  # fails early, in plain words, without a broker or topic
    checkpoint = checkpoint_path(settings)
    deadline = None if duration_s is None else time.monotonic() + duration_s
    with exclusive(checkpoint):
        spark = spark_session(settings, "streamrec-ingest")
        spark.sparkContext.setLogLevel("ERROR")
        spark.dataSource.register(KafkaDataSource)
        writer = BatchWriter(settings, checkpoint, report)
        while True:
            query = _start_stream(spark, settings, writer, checkpoint, until_idle)
            failure = _run(query, None if deadline is None else deadline - time.monotonic(), report)
            if failure is None:
                break
            digest = error_digest(failure)
            if until_idle or not _lost_the_broker(settings, failure):
                raise IngestError(f"the ingest stream failed: {digest} (stream checkpoint: {checkpoint})")
            if not _reconnect(settings, digest, deadline, report):
                break  # the run's time ended while the broker was away
        writer.finish()
    return writer.stats


def _start_stream(spark: Any, settings: Settings, writer: BatchWriter, checkpoint: Path, until_idle: bool) -> Any:
    """Start the stream from ``checkpoint`` (its offsets, or INGEST_STARTING_OFFSETS for a new one)."""
    from ingestion.kafka_source import SOURCE_NAME

    stream = (
        spark.readStream.format(SOURCE_NAME)
        .option("bootstrap", settings.kafka.bootstrap)
        .option("topic", settings.kafka.topic)
        .option("startingOffsets", settings.ingest.starting_offsets)
        .option("maxRecordsPerTrigger", str(settings.ingest.max_records_per_trigger))
        .option("minPartitions", str(spark.sparkContext.defaultParallelism))
        .load()
        .writeStream.foreachBatch(writer)
        .option("checkpointLocation", str(checkpoint))
        .queryName("streamrec-ingest")
    )
    if until_idle:
        stream = stream.trigger(availableNow=True)
    else:
        stream = stream.trigger(processingTime=f"{settings.ingest.trigger_interval_s} seconds")
    return stream.start()


def _run(query: Any, duration_s: float | None, report: Report) -> str | None:
    """Wait until ``query`` ends, ``duration_s`` passes or an interrupt, then stop it between
    batches; the text of its failure, or None."""
    from pyspark.errors import StreamingQueryException

    try:
        if duration_s is None:
            query.awaitTermination()
        else:
            query.awaitTermination(max(duration_s, 0.0))  # seconds; Spark takes a float too
    except KeyboardInterrupt:
        report("interrupted: stopping after the running micro-batch")
    except StreamingQueryException:
        pass  # reported by the caller, in a few plain words, from query.exception()
    finally:
        _stop_between_batches(query)
    failure = query.exception()
    return None if failure is None else str(failure)


def _lost_the_broker(settings: Settings, failure: str) -> bool:
    """Whether the stream failed because Kafka went away (it names a lost connection, or the
    broker does not answer now), not for something a retry would meet again."""
    if any(sign in failure for sign in BROKER_LOST):
        return True
    try:
        topic_ends(settings)
    except IngestError as error:
        return str(error).startswith("cannot reach Kafka")
    return False


def _reconnect(settings: Settings, lost: str, deadline: float | None, report: Report) -> bool:
    """Wait, doubling the wait, until the broker answers with the topic (each try reported);
    False when ``deadline`` passes first."""
    where = f"Kafka at {settings.kafka.bootstrap}"
    wait_s = RECONNECT_FIRST_S
    report(f"lost {where} ({lost}); reconnecting in {wait_s:.0f} s")
    while True:
        if deadline is not None and time.monotonic() + wait_s > deadline:
            report(f"the run's time ended while {where} was away")
            return False
        time.sleep(wait_s)
        try:
            topic_ends(settings)
        except IngestError as error:
            wait_s = min(wait_s * 2, RECONNECT_MAX_S)
            report(f"{where} does not answer ({error}); next try in {wait_s:.0f} s")
            continue
        report(f"reconnected to {where}: the stream goes on from its checkpoint")
        return True


def _stop_between_batches(query: Any, patience_s: float = 120.0) -> None:
    """Stop ``query`` once no micro-batch is running (a stop mid-batch is safe, only wasteful)."""
    with contextlib.suppress(TimeoutError):  # a batch still running after patience_s is stopped with it
        wait_until(
            lambda: not (query.isActive and query.status.get("isTriggerActive")),
            patience_s,
            interval_s=0.1,
            what="the running micro-batch to end",
        )
    if query.isActive:
        query.stop()

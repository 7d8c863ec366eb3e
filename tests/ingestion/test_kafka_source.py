"""The Kafka streaming source on a real broker and a real local Spark session."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from ingestdata import events, fresh_settings, send
from pyspark.sql.streaming.datasource import ReadAllAvailable

from infra.polling import wait_until
from infra.settings import Settings
from ingestion.kafka_client import KafkaSourceError, high_watermarks, kafka_consumer
from ingestion.kafka_source import SOURCE_NAME, KafkaStreamReader, read_range
from ingestion.producer import encode_event


def _collect(spark, settings: Settings, checkpoint: Path, **options: str) -> list[pa.Table]:
    """Run the source once with Trigger.AvailableNow; the Arrow table of every micro-batch."""
    batches: list[pa.Table] = []
    reader = spark.readStream.format(SOURCE_NAME).option("bootstrap", settings.kafka.bootstrap)
    reader = reader.option("topic", settings.kafka.topic)
    for name, value in options.items():
        reader = reader.option(name, value)
    query = (
        reader.load()
        .writeStream.foreachBatch(lambda df, _id: batches.append(df.toArrow()))
        .option("checkpointLocation", str(checkpoint))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination(300)
    assert query.exception() is None, query.exception()
    return batches


def _coordinates(batches: list[pa.Table]) -> list[tuple[int, int]]:
    return sorted(
        (p, o) for b in batches for p, o in zip(b["partition"].to_pylist(), b["offset"].to_pylist(), strict=True)
    )


def test_high_watermarks_are_the_true_ends(kafka_broker: Settings, tmp_path: Path) -> None:
    settings = fresh_settings(tmp_path, partitions=3)
    sent = send(settings, [encode_event(e) for e in events(2_000)])
    consumer = kafka_consumer(settings.kafka.bootstrap)
    try:
        ends = high_watermarks(consumer, settings.kafka.topic)
        assert ends == {str(p): sum(1 for s in sent if s.partition == p) for p in range(3)}
        send(settings, [encode_event(e) for e in events(10, seed=2)])
        assert sum(high_watermarks(consumer, settings.kafka.topic).values()) == 2_010  # the same consumer sees new ends
    finally:
        consumer.close()


def test_stream_reads_every_record_once_in_bounded_batches(spark, kafka_broker: Settings, tmp_path: Path) -> None:
    settings = fresh_settings(tmp_path, partitions=3)
    sent = send(settings, [encode_event(e) for e in events(1_000)])
    batches = _collect(spark, settings, tmp_path / "ckpt", maxRecordsPerTrigger="300")
    assert len(batches) >= 4 and all(b.num_rows <= 300 + 3 for b in batches)
    assert _coordinates(batches) == sorted((s.partition, s.offset) for s in sent)
    rows = {
        (p, o): (k, v)
        for b in batches
        for p, o, k, v in zip(*(b[c].to_pylist() for c in ("partition", "offset", "key", "value")), strict=True)
    }
    assert all(rows[(s.partition, s.offset)] == (s.record.key, s.record.value) for s in sent)


def test_restart_resumes_from_checkpoint_and_latest_skips_history(
    spark, kafka_broker: Settings, tmp_path: Path
) -> None:
    settings = fresh_settings(tmp_path, partitions=2)
    send(settings, [encode_event(e) for e in events(300)])
    assert sum(b.num_rows for b in _collect(spark, settings, tmp_path / "earliest")) == 300
    assert sum(b.num_rows for b in _collect(spark, settings, tmp_path / "latest", startingOffsets="latest")) == 0
    later = send(settings, [encode_event(e) for e in events(50, seed=9)])
    new = sorted((s.partition, s.offset) for s in later)
    assert _coordinates(_collect(spark, settings, tmp_path / "earliest")) == new
    assert _coordinates(_collect(spark, settings, tmp_path / "latest", startingOffsets="latest")) == new


def test_partitions_missing_from_the_offsets_are_read_from_their_start(kafka_broker: Settings, tmp_path: Path) -> None:
    """Partitions added to a topic (absent from the stream's offsets) are planned from offset 0.

    Tansu cannot add partitions to a topic (no CreatePartitions), so the stream starts with
    offsets that name only partition 0, as a checkpoint written before the others existed would.
    """
    settings = fresh_settings(tmp_path, partitions=3)
    sent = send(settings, [encode_event(e) for e in events(600)])
    reader = KafkaStreamReader({"bootstrap": settings.kafka.bootstrap, "topic": settings.kafka.topic})
    try:
        start = {"0": sum(1 for s in sent if s.partition == 0)}
        end = reader.latestOffset(start, ReadAllAvailable())
        ranges = reader.partitions(start, end)
        assert {(r.partition, r.start) for r in ranges} == {(1, 0), (2, 0)}
        read = sorted(
            (p, o)
            for r in ranges
            for b in read_range(r)
            for p, o in zip(b["partition"].to_pylist(), b["offset"].to_pylist(), strict=True)
        )
        assert read == sorted((s.partition, s.offset) for s in sent if s.partition != 0)
    finally:
        reader.stop()


def test_topics_created_later_are_found_by_the_same_reader(kafka_broker: Settings, tmp_path: Path) -> None:
    """Each trigger refreshes the topic metadata, so the running reader sees new partitions."""
    settings = fresh_settings(tmp_path, partitions=1)
    later = settings.updated(topic=settings.kafka.topic + "-later")
    reader = KafkaStreamReader({"bootstrap": settings.kafka.bootstrap, "topic": later.kafka.topic})
    try:
        with pytest.raises(KafkaSourceError, match="does not exist"):
            reader.latestOffset({}, ReadAllAvailable())
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
        admin.create_topics([NewTopic(later.kafka.topic, 4, 1)])
        admin.close()
        send(later, [encode_event(e) for e in events(40)])
        assert set(reader.latestOffset({}, ReadAllAvailable())) == {"0", "1", "2", "3"}
    finally:
        reader.stop()


def test_a_truncated_topic_is_an_error_not_a_silent_skip(kafka_broker: Settings, tmp_path: Path) -> None:
    settings = fresh_settings(tmp_path, partitions=1)
    send(settings, [encode_event(e) for e in events(20)])
    reader = KafkaStreamReader({"bootstrap": settings.kafka.bootstrap, "topic": settings.kafka.topic})
    try:
        with pytest.raises(KafkaSourceError, match="recreated or truncated"):
            reader.latestOffset({"0": 500}, ReadAllAvailable())
    finally:
        reader.stop()


def test_a_running_query_follows_new_records(spark, kafka_broker: Settings, tmp_path: Path) -> None:
    settings = fresh_settings(tmp_path, partitions=2)
    seen: list[int] = []
    query = (
        spark.readStream.format(SOURCE_NAME)
        .option("bootstrap", settings.kafka.bootstrap)
        .option("topic", settings.kafka.topic)
        .load()
        .writeStream.foreachBatch(lambda df, _id: seen.append(df.count()))
        .option("checkpointLocation", str(tmp_path / "ckpt"))
        .trigger(processingTime="0.5 seconds")
        .start()
    )
    try:
        for wave in range(3):
            send(settings, [encode_event(e) for e in events(100, seed=wave)])
            target = 100 * (wave + 1)
            wait_until(lambda target=target: sum(seen) >= target, 120, interval_s=0.2, what=f"wave {wave} to arrive")
            assert sum(seen) == target
    finally:
        query.stop()


def test_read_limit_is_shared_by_lag_and_met_exactly() -> None:
    from ingestion.kafka_source import _share_limit

    start = {"0": 100, "1": 0, "2": 50}
    ends = {"0": 400, "1": 7, "2": 50, "3": 993}
    limited = _share_limit(start, ends, 250)
    assert sum(limited[p] - start.get(p, 0) for p in limited) == 250
    assert all(start.get(p, 0) <= limited[p] <= ends[p] for p in ends)
    assert limited["3"] - 0 > limited["0"] - 100 > limited["1"] - 0  # more lag, bigger share
    assert _share_limit(start, ends, 10_000) == ends
    assert sum(_share_limit({}, {"0": 5, "1": 5}, 1).values()) == 1  # always progress


def test_min_partitions_splits_big_ranges_into_contiguous_pieces(kafka_broker: Settings, tmp_path: Path) -> None:
    settings = fresh_settings(tmp_path, partitions=1)
    sent = send(settings, [encode_event(e) for e in events(30_000)])
    reader = KafkaStreamReader(
        {"bootstrap": settings.kafka.bootstrap, "topic": settings.kafka.topic, "minpartitions": "3"}
    )
    try:
        end = reader.latestOffset({"0": 0}, ReadAllAvailable())
        ranges = reader.partitions({"0": 0}, end)
        assert [(r.start, r.end) for r in ranges] == [(0, 10_000), (10_000, 20_000), (20_000, 30_000)]
        offsets = [o for r in ranges for b in read_range(r) for o in b["offset"].to_pylist()]
        assert offsets == [s.offset for s in sent] == list(range(30_000))
        small = reader.partitions({"0": 15_000}, end)  # pieces stay >= 10,000 records
        assert [(r.start, r.end) for r in small] == [(15_000, 30_000)]
    finally:
        reader.stop()

"""The ingest stream end to end: real broker, real Spark, real Delta tables."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from deltalake import DeltaTable
from ingestdata import (
    coordinates,
    encode_event,
    events,
    fresh_settings,
    mixed_records,
    send,
    table,
)
from kafka.admin import KafkaAdminClient, NewTopic
from test_validation import EXPECTED_REASONS, NOW, _events, _records

from infra.lake import append_once, committed_version
from infra.settings import Settings
from ingestion.checkpoints import checkpoint_path, set_aside_checkpoint_of_empty_topic
from ingestion.errors import IngestError
from ingestion.lake_writer import SILVER_APP_ID, SilverMaintainer
from ingestion.schema import (
    BRONZE_SCHEMA,
    BRONZE_TABLE,
    EVENT_ORDER,
    QUARANTINE_TABLE,
    SILVER_TABLE,
)
from ingestion.stream import run_ingest
from ingestion.validation import ValidationLimits, validate_records


def _tables(settings: Settings):
    return (table(settings.table_uri(name)) for name in (BRONZE_TABLE, QUARANTINE_TABLE, SILVER_TABLE))


def _assert_exact(settings: Settings, sent: list) -> None:
    """bronze = the valid records, quarantine = the invalid ones, each exactly once; silver = unique events."""
    bronze, quarantine, silver = _tables(settings)
    valid = [s for s in sent if s.record.kind is None]
    invalid = [s for s in sent if s.record.kind is not None]
    assert coordinates(bronze) == sorted((s.partition, s.offset) for s in valid)
    assert Counter(bronze["event_id"].to_pylist()) == Counter(_event_id(s) for s in valid)  # no extra copies
    assert coordinates(quarantine) == sorted((s.partition, s.offset) for s in invalid)
    by_place = {(s.partition, s.offset): s for s in invalid}
    for row in quarantine.to_pylist():
        sent_record = by_place[(row["kafka_partition"], row["kafka_offset"])].record
        assert row["raw"] == sent_record.value and row["raw_key"] == sent_record.key
        assert re.search(EXPECTED_REASONS[sent_record.kind], row["reason"]), (sent_record.kind, row["reason"])
    first = {}
    for s in sorted(valid, key=lambda s: (s.partition, s.offset)):
        first.setdefault(_event_id(s), (s.partition, s.offset))
    assert coordinates(silver) == sorted(first.values())
    assert silver.num_rows == len(set(silver["event_id"].to_pylist()))


def _event_id(sent) -> str:
    return json.loads(sent.record.value)["event_id"]


def test_ingest_until_idle_lands_every_record_exactly_once(spark, kafka_broker: Settings, tmp_path: Path) -> None:
    settings = fresh_settings(tmp_path, partitions=3, ingest_max_records_per_trigger=700, ingest_max_event_bytes=1000)
    records = mixed_records(settings, 3_000)
    duplicates = [r for r in records if r.kind is None][:200]  # the same events produced twice
    sent = send(settings, records + duplicates)
    stats = run_ingest(settings, until_idle=True, report=lambda line: None)
    assert stats.batches >= 4 and stats.records == len(sent)
    _assert_exact(settings, sent)
    kinds = Counter(s.record.kind for s in sent if s.record.kind)
    assert set(kinds) == set(EXPECTED_REASONS)  # every malformed kind went through

    bronze, _, silver = _tables(settings)
    assert bronze.schema == BRONZE_SCHEMA
    assert silver.num_rows == bronze.num_rows - len(duplicates)
    assert DeltaTable(settings.table_uri(BRONZE_TABLE)).metadata().partition_columns == ["event_date"]

    # A second run ingests only what arrived since, and silver stays deduplicated.
    more = send(settings, [encode_event(e) for e in events(500, seed=11)] + duplicates[:50])
    run_ingest(settings, until_idle=True, report=lambda line: None)
    _assert_exact(settings, sent + more)


def test_replayed_batch_after_a_crash_writes_only_what_was_missing(
    spark, kafka_broker: Settings, tmp_path: Path
) -> None:
    """Crash points reproduced on disk: after both writes, and between the bronze and quarantine writes."""
    settings = fresh_settings(tmp_path, partitions=2, ingest_max_event_bytes=1000)
    sent = send(settings, mixed_records(settings, 400, bad_every=5))
    run_ingest(settings, until_idle=True, report=lambda line: None)
    _assert_exact(settings, sent)

    # Crash after the Delta writes, before Spark committed the batch: the batch is replayed.
    commits = sorted((checkpoint_path(settings) / "commits").glob("[0-9]*"), key=lambda p: int(p.name))
    commits[-1].unlink()
    commits[-1].with_name(f".{commits[-1].name}.crc").unlink(missing_ok=True)  # Hadoop's checksum file
    # ... and also as if the quarantine write had not happened yet.
    shutil.rmtree(settings.table_uri(QUARANTINE_TABLE))
    run_ingest(settings, until_idle=True, report=lambda line: None)
    _assert_exact(settings, sent)


def _bronze_rows(values: list[bytes]):
    return validate_records(_records(values), ValidationLimits(), NOW).valid


def test_append_once_writes_a_version_once(tmp_path: Path) -> None:
    rows = _bronze_rows([encode_event(e).value for e in _events(50)])
    uri = str(tmp_path / "t")
    assert append_once(uri, rows, "app", 0, ["event_date"])
    assert not append_once(uri, rows, "app", 0, ["event_date"])
    assert append_once(uri, rows, "other-app", 0, ["event_date"])
    assert append_once(uri, rows, "app", 1, ["event_date"])
    assert committed_version(uri, "app") == 1 and table(uri).num_rows == 3 * rows.num_rows > 0


def test_silver_keeps_the_earliest_record_and_sorts_each_append(tmp_path: Path) -> None:
    values = [encode_event(e).value for e in _events(300)]
    rows = _bronze_rows(values + values[:40])
    bronze, silver_uri = str(tmp_path / "bronze"), str(tmp_path / "silver")
    append_once(bronze, rows, "app", 0, ["event_date"])
    maintainer = SilverMaintainer(bronze, silver_uri)
    update = maintainer.catch_up()
    assert (update.rows_read, update.rows_added) == (340, 300)
    silver = table(silver_uri)
    assert max(silver["kafka_offset"].to_pylist()) < 300  # the first copy (lower offset) won
    assert maintainer.caught_up() and maintainer.catch_up().rows_added == 0
    assert committed_version(silver_uri, SILVER_APP_ID) == 0

    # New bronze rows: only unseen event_ids reach silver, also for a fresh maintainer (no cache).
    more = _bronze_rows(values[:10] + [encode_event(e).value for e in _events(5, seed=4)])
    append_once(bronze, more, "app", 1, ["event_date"])
    assert SilverMaintainer(bronze, silver_uri).catch_up().rows_added == 5
    files = DeltaTable(silver_uri).to_pyarrow_dataset().get_fragments()
    for fragment in files:
        part = fragment.to_table(columns=list(EVENT_ORDER))
        keys = list(zip(*(part[c].to_pylist() for c in EVENT_ORDER), strict=True))
        assert keys == sorted(keys)


def test_cli_refuses_both_modes() -> None:
    streamrec = str(Path(sys.executable).parent / "streamrec")
    done = subprocess.run([streamrec, "ingest", "--until-idle", "--for", "1"], capture_output=True, text=True)
    assert done.returncode != 0 and "either --until-idle or --for" in done.stderr


def test_ingest_explains_a_missing_topic_or_broker(
    kafka_broker: Settings, test_env: dict[str, str], tmp_path: Path
) -> None:
    from infra.processes import free_port

    streamrec = str(Path(sys.executable).parent / "streamrec")
    env = {**test_env, "PATH": "/usr/bin:/bin", "STREAMREC_LAKE_URI": str(tmp_path / "lake")}
    missing = subprocess.run([streamrec, "ingest", "--until-idle"], env={**env, "STREAMREC_TOPIC": "no-such-topic"},
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert missing.returncode == 1 and "topic no-such-topic does not exist" in missing.stderr
    unreachable = {**env, "STREAMREC_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    down = subprocess.run([streamrec, "ingest", "--until-idle"], env=unreachable,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert down.returncode == 1 and "cannot reach Kafka" in down.stderr


def test_a_recreated_topic_stops_the_stream_naming_its_checkpoint(
    spark, kafka_broker: Settings, tmp_path: Path
) -> None:
    settings = fresh_settings(tmp_path, partitions=1)
    send(settings, [encode_event(e) for e in events(50)])
    run_ingest(settings, until_idle=True, report=lambda line: None)
    _recreate_topic(settings)
    send(settings, [encode_event(e) for e in events(10, seed=3)])
    with pytest.raises(IngestError, match=re.escape(str(checkpoint_path(settings)))):
        run_ingest(settings, until_idle=True, report=lambda line: None)
    assert table(settings.table_uri(BRONZE_TABLE)).num_rows == 50  # nothing lost, nothing skipped


def test_an_empty_new_topic_lets_the_stream_start_over(spark, kafka_broker: Settings, tmp_path: Path) -> None:
    settings = fresh_settings(tmp_path, partitions=1)
    first = [encode_event(e) for e in events(50)]
    send(settings, first)
    run_ingest(settings, until_idle=True, report=lambda line: None)
    assert set_aside_checkpoint_of_empty_topic(settings) is None  # records on the topic: keep going
    _recreate_topic(settings)
    kept = set_aside_checkpoint_of_empty_topic(settings)
    assert kept is not None and kept.is_dir() and not checkpoint_path(settings).exists()
    # What a rerun of `make demo` sends after the broker restarted: the same events again, and new ones.
    send(settings, first)
    later = send(settings, [encode_event(e) for e in events(10, seed=3)])
    run_ingest(settings, until_idle=True, report=lambda line: None)
    bronze = table(settings.table_uri(BRONZE_TABLE))
    assert bronze.num_rows == 110 and set(bronze["event_id"].to_pylist()) >= {_event_id(s) for s in later}
    silver_ids = table(settings.table_uri(SILVER_TABLE))["event_id"].to_pylist()
    assert len(silver_ids) == len(set(silver_ids)) == 60  # one copy of each event in silver


def _recreate_topic(settings: Settings) -> None:
    """What a restarted in-memory broker looks like: the same topic, empty again."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    try:
        admin.delete_topics([settings.kafka.topic])
        admin.create_topics([NewTopic(settings.kafka.topic, 1, 1)])
    finally:
        admin.close()

"""`streamrec produce synthetic|replay`: real broker, records read back from the topic.

The commands run in-process (the ingestion CLI's Typer app): what is checked is what they send and
print, not a new interpreter's start-up. The console script itself, and its plain error where the
broker is unreachable, run as a subprocess in the last test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import typer
from click.testing import Result
from ingestdata import env_of, fresh_settings
from test_validation import EXPECTED_REASONS
from typer.testing import CliRunner

from infra.settings import Settings
from ingestion.cli import register
from ingestion.kafka_client import high_watermarks, kafka_consumer
from ingestion.kafka_source import KafkaRange, read_range
from ingestion.replay import rating_action, read_replay
from ingestion.schema import KAFKA_RECORD_SCHEMA
from ingestion.validation import ValidationLimits, validate_records

STREAMREC = str(Path(sys.executable).parent / "streamrec")


def _topic_records(settings: Settings) -> pa.Table:
    consumer = kafka_consumer(settings.kafka.bootstrap)
    try:
        ends = high_watermarks(consumer, settings.kafka.topic)
    finally:
        consumer.close()
    batches = [
        batch
        for partition, end in ends.items()
        for batch in read_range(
            KafkaRange(settings.kafka.bootstrap, settings.kafka.topic, int(partition), 0, end, 30_000)
        )
    ]
    return pa.Table.from_batches(batches, schema=KAFKA_RECORD_SCHEMA)


def _invoke(settings: Settings, test_env: dict[str, str], *args: str) -> Result:
    """`streamrec produce ARGS` in-process, with the environment a subprocess would get."""
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["produce", *args], env=env_of(settings, test_env))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def _produce(settings: Settings, test_env: dict[str, str], *args: str) -> dict:
    done = _invoke(settings, test_env, *args)
    assert done.exit_code == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_synthetic_sends_keyed_events_and_every_malformed_kind(
    kafka_broker: Settings, test_env: dict[str, str], tmp_path: Path
) -> None:
    settings = fresh_settings(tmp_path)
    summary = _produce(settings, test_env, "synthetic", "--events", "3000", "--users", "50", "--items", "200",
                       "--bad-fraction", "0.1", "--seed", "3")  # fmt: skip
    assert summary["sent"] == 3000 and summary["failed"] == 0
    assert summary["valid"] + summary["invalid"] == 3000 and 200 < summary["invalid"] < 400
    assert set(summary["invalid_kinds"]) == set(EXPECTED_REASONS)
    records = _topic_records(settings)
    assert records.num_rows == 3000
    result = validate_records(records, ValidationLimits.from_settings(settings.ingest))
    assert (result.valid.num_rows, result.invalid.num_rows) == (summary["valid"], summary["invalid"])
    valid_keys = {
        (p, o): k for p, o, k in zip(*(records[c].to_pylist() for c in ("partition", "offset", "key")), strict=True)
    }
    assert all(
        valid_keys[(row["kafka_partition"], row["kafka_offset"])] == row["user_id"].encode()
        for row in result.valid.to_pylist()
    )


def test_rate_limit_is_kept(kafka_broker: Settings, test_env: dict[str, str], tmp_path: Path) -> None:
    settings = fresh_settings(tmp_path, partitions=1)
    summary = _produce(settings, test_env, "synthetic", "--events", "600", "--rate", "1000")
    assert summary["sent"] == 600 and summary["rate"] <= 1050


def test_replay_formats(tmp_path: Path) -> None:
    sasrec = tmp_path / "data.txt"
    sasrec.write_text("1 10\n1 11\n2 10\n1 12\n2 13\n")
    frame = read_replay(sasrec, "sasrec", start_ms=1_000, step_ms=100)
    assert list(zip(frame.user_id, frame.item_id, frame.ts, strict=True)) == [
        ("1", "10", 1_000), ("2", "10", 1_000), ("1", "11", 1_100), ("2", "13", 1_100), ("1", "12", 1_200),
    ]  # fmt: skip
    assert set(frame.action) == {"click"} and frame.event_id.is_unique

    dat = tmp_path / "ratings.dat"
    dat.write_text("1::10::5::978300760\n1::11::2::978300700\n2::10::3::978300800\n")
    frame = read_replay(dat, "movielens")
    assert list(frame.item_id) == ["11", "10", "10"] and list(frame.action) == ["dislike", "like", "view"]
    assert list(frame.ts) == [978300700000, 978300760000, 978300800000]
    csv_ml = tmp_path / "ratings.csv"
    csv_ml.write_text("userId,movieId,rating,timestamp\n1,10,4.5,100\n1,11,2.5,50\n")
    assert list(read_replay(csv_ml, "movielens").action) == ["view", "like"]
    assert [rating_action(r) for r in (5, 4, 3.5, 2.5, 2, 0.5)] == [
        "like",
        "like",
        "view",
        "view",
        "dislike",
        "dislike",
    ]

    csv = tmp_path / "events.csv"
    csv.write_text("user,item,ts,action\nu1,i1,2000,like\nu2,i2,1000,buy\nu1,i3,soon,click\n")
    frame = read_replay(csv, "csv")
    assert list(frame.item_id) == ["i2", "i1", "i3"] and list(frame.ts) == [1000, 2000, "soon"]
    headless = tmp_path / "plain.csv"
    headless.write_text("u1,i1,5\n")
    assert list(read_replay(headless, "csv", ts_unit="s").ts) == [5000]
    with pytest.raises(ValueError, match="expected columns"):
        (tmp_path / "bad.csv").write_text("a,b\n")
        read_replay(tmp_path / "bad.csv", "csv")


def test_replay_cli_sends_the_file_in_time_order(
    kafka_broker: Settings, test_env: dict[str, str], tmp_path: Path
) -> None:
    settings = fresh_settings(tmp_path, partitions=1)
    dat = tmp_path / "ratings.dat"
    dat.write_text(
        "".join(f"{u}::{10 + i}::{1 + (u + i) % 5}::{978300000 + 60 * i + u}\n" for u in range(1, 4) for i in range(20))
    )
    summary = _produce(settings, test_env, "replay", "--format", "movielens", str(dat))
    assert summary == {**summary, "sent": 60, "valid": 60, "invalid": 0, "failed": 0}
    sent = [json.loads(value) for value in _topic_records(settings)["value"].to_pylist()]
    assert [e["ts"] for e in sent] == sorted(e["ts"] for e in sent)
    assert {e["event_id"] for e in sent} == {f"movielens-ratings-{n}" for n in range(60)}
    missing = _produce_fails(settings, test_env, "replay", "--format", "nope", str(dat))
    assert "unknown format" in missing


def _produce_fails(settings: Settings, test_env: dict[str, str], *args: str) -> str:
    done = _invoke(settings, test_env, *args)
    assert done.exit_code != 0
    return done.stderr


def test_an_unreachable_broker_is_a_plain_error(test_env: dict[str, str], tmp_path: Path) -> None:
    from infra.processes import free_port

    env = {**test_env, "STREAMREC_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    done = subprocess.run(
        [STREAMREC, "produce", "synthetic", "--events", "10"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "cannot reach Kafka" in done.stderr and "Traceback" not in done.stderr

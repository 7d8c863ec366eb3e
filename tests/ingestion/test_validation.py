"""Validation of raw records: every rejection kind, its reason, and fast == per-record parser."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from ingestion.malformed import malformed_kinds
from ingestion.schema import BRONZE_SCHEMA, KAFKA_RECORD_SCHEMA, QUARANTINE_SCHEMA, REQUIRED_FIELDS
from ingestion.synthetic import SyntheticConfig, generate_events
from ingestion.validation import ValidationLimits, validate_records

NOW = datetime(2026, 1, 1, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
LIMITS = ValidationLimits(max_event_bytes=1_000, future_tolerance_ms=3_600_000)

# One pattern per malformed kind: each kind has its own reason.
EXPECTED_REASONS = {
    "no_value": r"^the record has no value",
    "oversize": r"^the value is \d+ bytes, over the limit of 1000 bytes",
    "not_utf8": r"^the value is not valid UTF-8",
    "not_json": r"^the value is not JSON \(",
    "not_object": r"^the value is JSON but not an object \(it is an array\)",
    "missing_field": r"^required field '(event_id|user_id|item_id|action|ts)' is missing$",
    "null_field": r"^required field '(user_id|item_id|action|ts)' is null$",
    "wrong_type_str": r"^field 'ts' must be an integer, not a string",
    "wrong_type_num": r"^field 'item_id' must be a string, not a number",
    "float_ts": r"^field 'ts' must be an integer, not a number",
    "duplicate_field": r"^field 'event_id' appears more than once$",
    "empty_id": r"^field '(user_id|item_id)' is empty$",
    "unknown_action": r"^action '.*' is not one of impression, click",
    "negative_ts": r"^ts -\d+ is negative",
    "future_ts": r"^ts \d+ is more than 3600 s after its Kafka timestamp \d{4}-\d\d-\d\dT[\d:.]+Z",
    "negative_dwell": r"^dwell_ms -\d+ is negative$",
}


def _events(count: int, seed: int = 1) -> list[dict]:
    config = SyntheticConfig(users=50, items=300, events=count, seed=seed, start_ms=NOW_MS - 86_400_000 * 30)
    return list(generate_events(config))


def _records(values: list[bytes | None]) -> pa.Table:
    n = len(values)
    return pa.table(
        {
            "key": pa.array([b"k"] * n, pa.binary()),
            "value": pa.array(values, pa.binary()),
            "partition": pa.array([i % 3 for i in range(n)], pa.int32()),
            "offset": pa.array(range(n), pa.int64()),
            "timestamp": pa.array([NOW] * n, pa.timestamp("us", tz="UTC")),
        },
        schema=KAFKA_RECORD_SCHEMA,
    )


def _encode(event: dict) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def test_valid_events_become_typed_bronze_rows_in_kafka_order() -> None:
    events = _events(500)
    result = validate_records(_records([_encode(e) for e in events]), LIMITS, NOW)
    assert result.invalid.num_rows == 0
    assert result.valid.schema == BRONZE_SCHEMA
    rows = result.valid.to_pylist()
    assert [r["event_id"] for r in rows] == [e["event_id"] for e in events]
    assert [r["kafka_offset"] for r in rows] == list(range(500))
    first = rows[0]
    assert first["ts"] == events[0]["ts"] and first["dwell_ms"] == events[0].get("dwell_ms")
    assert first["event_date"] == datetime.fromtimestamp(events[0]["ts"] / 1000, UTC).date()
    assert first["ingested_at"] == NOW


def test_every_malformed_kind_is_quarantined_with_its_own_reason() -> None:
    rng = random.Random(7)
    kinds = malformed_kinds(LIMITS.max_event_bytes, NOW_MS)
    events = _events(40 * len(kinds))
    values: list[bytes | None] = []
    expected: dict[int, str] = {}
    for index, event in enumerate(events):
        if index % 2:
            values.append(_encode(event))
            continue
        kind = list(kinds)[(index // 2) % len(kinds)]
        expected[index] = kind
        values.append(kinds[kind](event, rng))
    result = validate_records(_records(values), LIMITS, NOW)
    assert result.valid.num_rows == len(events) - len(expected)
    assert result.invalid.schema == QUARANTINE_SCHEMA
    quarantined = result.invalid.to_pylist()
    assert [row["kafka_offset"] for row in quarantined] == sorted(expected)
    for row in quarantined:
        kind = expected[row["kafka_offset"]]
        assert re.search(EXPECTED_REASONS[kind], row["reason"]), (kind, row["reason"])
        assert row["raw"] == values[row["kafka_offset"]]
        assert row["raw_key"] == b"k"
    assert set(EXPECTED_REASONS) == set(kinds)


def test_fast_parser_agrees_with_per_record_parser() -> None:
    """Tricky records: both paths accept and reject the same ones with the same reason."""
    event = _events(1)[0]
    base = _encode(event)[1:-1].decode()  # the fields without braces
    required = _encode({name: event[name] for name in REQUIRED_FIELDS})[1:-1].decode()
    tricky = [
        "  {" + base + "}\t",
        "{" + base + ',"extra":{"nested":[1,2,{"x":null}]},"n":12345678901234567890123}',
        "{" + base + ',"x":NaN,"y":Infinity,"z":-Infinity}',
        "{" + base + ',"x":1e999}',
        "{" + base + ',"x":1,"x":2}',
        "{" + base + ',"x":"\\ud800"}',
        "{" + base + ',"x":"\\ud83d\\ude00"}',
        "{" + base + ',"x":"a\x01b"}',
        "{" + base + "}{" + base + "}",
        "{" + base + "} {}",
        "{" + base + ",}",
        "{\n" + base + "\n}",
        "\r\n{" + base + "}",
        "{" + required + ',"dwell_ms":null,"surface":null}',
        "{" + base.replace('"ts":', '"ts":-0+') + "}",
        "{" + base.replace('"ts":', '"ts":9223372036854775808,"t2":') + "}",
        "{" + base.replace('"ts":', '"ts":true,"t2":') + "}",
        "{" + base.replace('"ts":', '"ts":null,"t2":') + "}",
        "{" + base.replace('"event_id":', '"event_id":["a"],"e2":') + "}",
        "{}",
        "{ }",
        "",
        "   ",
        "null",
        "[]",
        '"text"',
        "42",
        "\ufeff{" + base + "}",
        "{'event_id': 'x'}",
    ]
    values = [text.encode() for text in tricky]
    fast = validate_records(_records(values), LIMITS, NOW)
    slow = validate_records(_records(values), LIMITS, NOW, fast=False)
    assert fast.valid.to_pylist() == slow.valid.to_pylist()
    assert fast.invalid.to_pylist() == slow.invalid.to_pylist()
    accepted = {row["kafka_offset"] for row in fast.valid.to_pylist()}
    assert accepted == {0, 1, 2, 4, 6, 11, 12, 13}, fast.invalid.to_pylist()


def test_fast_path_isolates_bad_records_in_a_large_batch() -> None:
    rng = random.Random(3)
    kinds = malformed_kinds(LIMITS.max_event_bytes, NOW_MS)
    events = _events(5_000, seed=2)
    values = [_encode(e) for e in events]
    bad = sorted(rng.sample(range(len(values)), 60))
    for index in bad:
        values[index] = kinds[rng.choice(list(kinds))](events[index], rng)
    fast = validate_records(_records(values), LIMITS, NOW)
    slow = validate_records(_records(values), LIMITS, NOW, fast=False)
    assert [row["kafka_offset"] for row in fast.invalid.to_pylist()] == bad
    assert fast.valid.equals(slow.valid) and fast.invalid.equals(slow.invalid)


def test_limits_come_from_settings_and_boundaries_are_inclusive() -> None:
    from infra.settings import get_settings

    limits = ValidationLimits.from_settings(
        get_settings(ingest_max_event_bytes=200, ingest_future_tolerance_s=60).ingest
    )
    assert limits == ValidationLimits(200, 60_000)
    event = {"event_id": "e", "user_id": "u", "item_id": "i", "action": "view", "ts": NOW_MS + 60_000, "dwell_ms": 0}
    at_limit = _encode(event)
    at_limit = at_limit[:-1] + b',"pad":"' + b"x" * (200 - len(at_limit) - 9) + b'"}'
    assert len(at_limit) == 200
    late = _encode({**event, "ts": NOW_MS + 60_001})
    result = validate_records(_records([at_limit, at_limit + b" ", late, _encode({**event, "ts": 0})]), limits, NOW)
    assert [row["kafka_offset"] for row in result.valid.to_pylist()] == [0, 3]
    assert [row["kafka_offset"] for row in result.invalid.to_pylist()] == [1, 2]


@pytest.mark.parametrize("size", [0, 1])
def test_tiny_batches(size: int) -> None:
    values = [_encode(_events(1)[0])] * size
    result = validate_records(_records(values), LIMITS, NOW)
    assert result.valid.num_rows == size and result.invalid.num_rows == 0


def test_future_is_judged_by_the_kafka_timestamp_so_replays_agree() -> None:
    """Validating the same records later (a replay after a crash) gives the same split."""
    event = {"event_id": "e", "user_id": "u", "item_id": "i", "action": "view", "ts": NOW_MS + 3_600_000 + 1}
    records = _records([_encode(event)])
    for later in (NOW, datetime(2026, 1, 2, tzinfo=UTC)):
        assert validate_records(records, LIMITS, later).invalid.num_rows == 1
    without_timestamp = records.set_column(4, "timestamp", pa.nulls(1, pa.timestamp("us", tz="UTC")))
    assert validate_records(without_timestamp, LIMITS, NOW).invalid.num_rows == 1
    assert validate_records(without_timestamp, LIMITS, datetime(2026, 1, 2, tzinfo=UTC)).valid.num_rows == 1

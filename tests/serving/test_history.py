"""The online user history: exact bootstrap from the lake, then a live tail of the real broker.

One module fixture produces events, ingests them (Spark) and builds the feature tables
(Spark); more events follow on the topic, among them a re-sent event and a malformed
record. Every test then starts OnlineHistory objects at the built feature versions.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from deltalake import DeltaTable
from historydata import (
    Sent,
    click,
    create_topic,
    distinct_valid,
    end_offsets,
    eventually,
    expected_histories,
    make_events,
    malformed,
    recreate_topic,
    send,
    settings_with_topic,
)

from features.build import build
from features.tables import USER_SEQUENCES_TABLE, recorded_state
from infra.settings import Settings, get_settings
from ingestion.lake_writer import SILVER_APP_ID
from ingestion.producer import encode_event
from ingestion.schema import BRONZE_TABLE, SILVER_TABLE
from ingestion.stream import run_ingest
from serving.history.store import HistoryEvent, OnlineHistory, UserHistory, partition_of

MAX_LEN = 4
PARTITIONS = 2
QUIET = lambda line: None  # noqa: E731


@dataclass
class Lake:
    """The module's topic and lake: what was sent, and the feature versions built."""

    settings: Settings
    user_sequences_version: int
    item_vocab_version: int
    snapshot: list[Sent]  # records sent before ingestion and the build
    sent: list[Sent]  # every record sent to the topic so far (tests append theirs)

    def history(self, **options: object) -> OnlineHistory:
        return OnlineHistory(
            self.settings,
            user_sequences_version=self.user_sequences_version,
            item_vocab_version=self.item_vocab_version,
            max_len=MAX_LEN,
            **options,  # type: ignore[arg-type]
        )


@pytest.fixture(scope="module")
def lake(kafka_broker: Settings, tmp_path_factory: pytest.TempPathFactory) -> Lake:
    rng = random.Random(7)
    settings = settings_with_topic(
        str(tmp_path_factory.mktemp("history") / "lake"), PARTITIONS, features_max_len=MAX_LEN
    )
    users, items = [f"u{n}" for n in range(6)], [f"i{n}" for n in range(10)]
    first = [encode_event(e) for e in make_events(rng, "pre", 60, users, items, span_s=40)]
    first[20:20] = [malformed("u1", "bad-1")]
    first.append(malformed("u2", "bad-2"))
    snapshot = send(settings, first[:40])
    run_ingest(settings, until_idle=True, report=QUIET)
    build(settings, log=QUIET)  # a full build (Spark) ...
    snapshot += send(settings, first[40:])
    run_ingest(settings, until_idle=True, report=QUIET)
    report = build(settings, incremental=True, log=QUIET)  # ... and an incremental one (MERGE), as serving sees
    assert report.mode == "incremental"
    versions = report.versions()

    # After the snapshot: late and tied timestamps, two new users, new items, a re-sent
    # event of the snapshot, a re-sent event of this batch, and a malformed record.
    later = make_events(rng, "post", 30, [*users, "u6", "u7"], [*items, "i10", "i11"], span_s=40)
    records = [encode_event(e) for e in later]
    records[5:5] = [snapshot[3].record]
    records[12:12] = [malformed("u3", "bad-3")]
    records.append(encode_event(later[0]))
    sent = snapshot + send(settings, records)
    return Lake(settings, versions[USER_SEQUENCES_TABLE], versions["features/item_vocab"], snapshot, sent)


@contextmanager
def started(lake: Lake, **options: object) -> Iterator[OnlineHistory]:
    """A started history that has caught up with everything sent so far."""
    history = lake.history(**options)
    history.start()
    try:
        owned = {p: end for p, end in end_offsets(lake.sent).items() if history.owns(p)}
        assert history.wait_for(owned, timeout_s=30), history.status()
        yield history
    finally:
        history.stop()


def _bronze_next(settings: Settings, version: int) -> dict[int, int]:
    bronze = DeltaTable(settings.table_uri(BRONZE_TABLE), version=version).to_pyarrow_table()
    ends: dict[int, int] = {}
    for partition, offset in zip(
        bronze["kafka_partition"].to_pylist(), bronze["kafka_offset"].to_pylist(), strict=True
    ):
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


def _histories(history: OnlineHistory, users: list[str]) -> dict[str, UserHistory | None]:
    return {user: history.get(user) for user in users}


def test_bootstrap_is_exact_and_the_tail_counts_each_event_once(lake: Lake) -> None:
    history = lake.history()
    boot = history.bootstrap()
    silver_version = recorded_state(lake.settings.table_uri(USER_SEQUENCES_TABLE), lake.user_sequences_version)[0]  # type: ignore[index]
    bronze_version = DeltaTable(lake.settings.table_uri(SILVER_TABLE), version=silver_version).transaction_version(
        SILVER_APP_ID
    )
    assert (boot.silver_version, boot.bronze_version) == (silver_version, bronze_version)
    # The first offset not in the snapshot: bronze max offset + 1, = after the last valid record sent.
    assert boot.start_offsets == _bronze_next(lake.settings, bronze_version)  # type: ignore[arg-type]
    assert boot.start_offsets == end_offsets([s for s in lake.snapshot if s.event is not None])
    assert history.bootstrap() is boot

    # Before the tail: exactly the snapshot (= the recompute over the records before the build).
    before = expected_histories(lake.snapshot, MAX_LEN)
    assert boot.users == len(before)
    for user, expected in before.items():
        assert history.get(user) == UserHistory(
            user, expected.events, expected.partition, boot.start_offsets[expected.partition] - 1
        )
    assert history.get("u6") is None and history.status()["events_applied"] == 0

    # The events after the snapshot reach users out of order: some go inside or before windows.
    last_ts = {user: expected.events[-1].ts for user, expected in before.items()}
    tail = lake.sent[len(lake.snapshot) :]
    assert any(s.event and s.event["ts"] < last_ts.get(s.event["user_id"], 0) for s in tail)

    history.start()
    try:
        ends = end_offsets(lake.sent)
        assert history.wait_for(ends, timeout_s=30), history.status()
        after = expected_histories(lake.sent, MAX_LEN)
        for user, expected in after.items():
            assert history.get(user) == UserHistory(
                user, expected.events, expected.partition, ends[expected.partition] - 1
            )
        status = history.status()
        json.dumps(status)
        new_events = len(distinct_valid(lake.sent)) - len(distinct_valid(lake.snapshot))
        valid_tail = [s for s in tail if s.event is not None]
        reread_invalid = [s for s in lake.sent if s.event is None and s.offset >= boot.start_offsets[s.partition]]
        assert (status["events_applied"], status["duplicates"], status["invalid"]) == (
            new_events,
            len(valid_tail) - new_events,
            len(reread_invalid),
        )
        assert status["duplicates"] == 2 and status["users"] == len(after)
        assert status["partitions"] == {p: {"next_offset": e, "high_watermark": e, "lag": 0} for p, e in ends.items()}
        assert status["running"] and status["last_error"] is None and status["start_offsets"] == boot.start_offsets
    finally:
        history.stop()
    assert not history.status()["running"]


def test_live_actions_show_up_at_once(lake: Lake) -> None:
    with started(lake) as history:
        [known] = send(lake.settings, [click("u1", "i-live", "live-1")])
        assert history.wait_for({known.partition: known.offset + 1}, timeout_s=10)
        seen = history.get("u1")
        assert seen is not None and seen.events[-1] == HistoryEvent("i-live", "click", known.event["ts"])  # type: ignore[index]
        assert len(seen.events) == MAX_LEN and seen.applied_offset == known.offset

        [fresh] = send(lake.settings, [click("brand-new-user", "i-live", "live-2")])
        assert history.wait_for({fresh.partition: fresh.offset + 1}, timeout_s=10)
        assert history.get("brand-new-user") == UserHistory(
            "brand-new-user",
            (HistoryEvent("i-live", "click", fresh.event["ts"]),),
            fresh.partition,
            fresh.offset,  # type: ignore[index]
        )
        assert partition_of("brand-new-user", PARTITIONS) == fresh.partition
        assert history.get("never-seen") is None
    lake.sent += [known, fresh]


def test_a_restarted_history_rebuilds_the_same_histories(lake: Lake) -> None:
    users = sorted(expected_histories(lake.sent, MAX_LEN))
    with started(lake) as first:
        before = _histories(first, users)
        counts = {key: first.status()[key] for key in ("events_applied", "duplicates", "invalid", "users")}
    with started(lake) as second:
        assert _histories(second, users) == before
        assert {key: second.status()[key] for key in counts} == counts
    expected = expected_histories(lake.sent, MAX_LEN)
    assert {user: history.events for user, history in before.items() if history} == {
        user: e.events for user, e in expected.items()
    }


def test_a_shard_holds_only_its_partitions(lake: Lake) -> None:
    expected = expected_histories(lake.sent, MAX_LEN)
    with started(lake, partitions={1}) as history:
        assert set(history.bootstrap().start_offsets) == {1} and set(history.status()["partitions"]) == {1}
        for user, e in expected.items():
            got = history.get(user)
            assert (got.events if got else None) == (e.events if e.partition == 1 else None)


def test_a_recreated_topic_is_read_from_its_start_and_new_partitions_are_tailed(
    lake: Lake, caplog: pytest.LogCaptureFixture
) -> None:
    """The same lake over a new topic, as after the local broker restarted: its partitions
    end before the snapshot's offsets, so both are read from their beginning. Then the topic
    is recreated under the tail with one more partition, which is tailed too."""
    caplog.set_level(logging.WARNING, logger="serving.history")
    settings = settings_with_topic(lake.settings.lake_root, PARTITIONS, features_max_len=MAX_LEN)
    again = [s.record for s in distinct_valid(lake.snapshot)[:3]]  # re-sent events: duplicates
    sent = send(settings, [*again, click("u1", "i-new", "recreated-1"), click("u6x", "i-new", "recreated-2")])
    recreated = Lake(settings, lake.user_sequences_version, lake.item_vocab_version, lake.snapshot, sent)
    history = recreated.history()
    history.start()
    try:
        assert eventually(lambda: history.status()["events_applied"] == 2), history.status()
        status = history.status()
        assert status["duplicates"] == 3 and status["topic_recreations"] == PARTITIONS
        assert {p: s["next_offset"] for p, s in status["partitions"].items()} == {
            p: end_offsets(sent).get(p, 0) for p in range(PARTITIONS)
        }
        assert "the topic was recreated" in caplog.text
        assert history.get("u1").events[-1].item_id == "i-new"  # type: ignore[union-attr]
        assert history.get("u6x").events == (HistoryEvent("i-new", "click", sent[-1].event["ts"]),)  # type: ignore[union-attr,index]

        recreate_topic(settings, PARTITIONS + 1)
        [late] = send(settings, [click("u-on-new-partition", "i-new", "added-1")], partition=PARTITIONS)
        assert eventually(lambda: history.get("u-on-new-partition") is not None, timeout_s=40), history.status()
        got = history.get("u-on-new-partition")
        assert got is not None and got.partition == PARTITIONS and got.applied_offset == late.offset
        assert set(history.status()["partitions"]) == set(range(PARTITIONS + 1))
        assert history.status()["running"]
    finally:
        history.stop()


def test_the_tail_waits_for_a_missing_topic_and_reports_it(lake: Lake) -> None:
    settings = get_settings(topic=f"missing-{uuid.uuid4().hex[:8]}", lake_uri=lake.settings.lake_root)
    history = Lake(settings, lake.user_sequences_version, lake.item_vocab_version, lake.snapshot, []).history()
    history.start()
    try:
        assert eventually(lambda: "does not exist" in (history.status()["last_error"] or "")), history.status()
        assert history.status()["running"] and not history.status()["tailing"]
        create_topic(settings, PARTITIONS)
        [record] = send(settings, [click("u1", "i-after", "missing-1")])
        assert eventually(lambda: history.get("u1").events[-1].item_id == "i-after", timeout_s=40), history.status()  # type: ignore[union-attr]
        assert history.status()["tailing"]
    finally:
        history.stop()

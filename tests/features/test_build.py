"""`features build`: known answers, vocabulary stability, incremental == full, crash re-runs."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable
from featuredata import Event, append_silver, sequences_by_item_id, silver_rows, table_rows

import features.build
from features import arrow_jobs
from features.build import ConcurrentBuildError, build
from features.reader import load_examples
from features.silver import silver_changes
from features.tables import ITEM_STATS_TABLE, ITEM_VOCAB_TABLE, USER_SEQUENCES_TABLE
from infra.settings import Settings, get_settings
from ingestion.schema import ACTIONS, SILVER_TABLE

QUIET = lambda message: None  # noqa: E731

# Kafka order is the order of this list. u1 has a tie at ts 1000 where Kafka order (z
# before a) differs from item order; u2 has one event; u3 only negative feedback.
EVENTS: list[Event] = [
    ("u1", "c", "view", 500),
    ("u1", "z", "click", 1000),
    ("u1", "a", "skip", 1000),
    ("u1", "d", "like", 2000),
    ("u1", "e", "impression", 3000),
    ("u2", "a", "purchase", 100),
    ("u3", "z", "skip", 700),
    ("u3", "d", "dislike", 800),
]


@pytest.fixture
def settings(tmp_path: Path, spark: object) -> Settings:
    return get_settings(home=tmp_path, features_max_len=3)


def _snapshot(settings: Settings) -> dict[str, list[dict]]:
    return {
        ITEM_VOCAB_TABLE: table_rows(settings, ITEM_VOCAB_TABLE, "item_index"),
        USER_SEQUENCES_TABLE: table_rows(settings, USER_SEQUENCES_TABLE, "user_id"),
        ITEM_STATS_TABLE: table_rows(settings, ITEM_STATS_TABLE, "item_index"),
    }


def test_full_build_known_answers(settings: Settings) -> None:
    append_silver(settings, silver_rows(EVENTS))
    report = build(settings, log=QUIET)
    assert report.mode == "full" and report.silver_version == 0
    assert report.versions() == {SILVER_TABLE: 0, ITEM_VOCAB_TABLE: 0, USER_SEQUENCES_TABLE: 0, ITEM_STATS_TABLE: 0}

    # Dense from 1 in (first_seen_ts, item_id) order; a and z tie at first_seen 100 vs 700.
    vocab = [
        (row["item_id"], row["item_index"], row["first_seen_ts"])
        for row in table_rows(settings, ITEM_VOCAB_TABLE, "item_index")
    ]
    assert vocab == [("a", 1, 100), ("c", 2, 500), ("z", 3, 700), ("d", 4, 800), ("e", 5, 3000)]

    sequences = {row["user_id"]: row for row in table_rows(settings, USER_SEQUENCES_TABLE, "user_id")}
    # u1: c@500, z@1000, a@1000 (Kafka order), d@2000, e@3000 -> the last 3.
    assert sequences["u1"]["item_indices"] == [1, 4, 5]
    assert sequences["u1"]["actions"] == ["skip", "like", "impression"]
    assert sequences["u1"]["timestamps"] == [1000, 2000, 3000]
    assert (sequences["u2"]["item_indices"], sequences["u2"]["actions"]) == ([1], ["purchase"])
    assert (sequences["u3"]["item_indices"], sequences["u3"]["actions"]) == ([3, 4], ["skip", "dislike"])

    stats = {row["item_id"]: row for row in table_rows(settings, ITEM_STATS_TABLE, "item_index")}
    assert (stats["a"]["skip_count"], stats["a"]["purchase_count"], stats["a"]["click_count"]) == (1, 1, 0)
    assert (stats["a"]["first_seen_ts"], stats["a"]["last_seen_ts"], stats["a"]["item_index"]) == (100, 1000, 1)
    assert sum(row[f"{action}_count"] for row in stats.values() for action in ACTIONS) == len(EVENTS)

    # The reader sees the same: u1's window has one positive (like) -> train only.
    train = load_examples(settings, "train", max_len=4)
    assert train.user_ids.tolist() == ["u1", "u2", "u3"]
    assert train.item_indices[0].tolist() == [1, 4, 5, 0] and train.num_items == 5


def test_ties_follow_kafka_order_not_item_order(settings: Settings) -> None:
    append_silver(settings, silver_rows([("u1", "z", "click", 1000), ("u1", "a", "view", 1000)]))
    append_silver(settings, silver_rows([("u2", "a", "click", 5), ("u2", "z", "view", 5)], first_offset=10))
    build(settings, log=QUIET)
    sequences = sequences_by_item_id(settings)
    assert sequences["u1"][0] == ["z", "a"] and sequences["u2"][0] == ["a", "z"]


def test_vocabulary_indices_never_change(settings: Settings) -> None:
    append_silver(settings, silver_rows(EVENTS))
    build(settings, log=QUIET)
    before = table_rows(settings, ITEM_VOCAB_TABLE, "item_index")
    # A second batch: old items, new items (n, m tie on first_seen_ts), and an old item
    # seen earlier than ever before, which must not move it.
    second = [("u4", "n", "click", 9000), ("u4", "m", "click", 9000), ("u5", "a", "view", 1), ("u5", "b", "like", 9500)]
    append_silver(settings, silver_rows(second, first_offset=100))
    for incremental in (True, False):
        build(settings, incremental=incremental, log=QUIET)
        after = table_rows(settings, ITEM_VOCAB_TABLE, "item_index")
        assert after[: len(before)] == before
        assert [(row["item_id"], row["item_index"]) for row in after[len(before) :]] == [("m", 6), ("n", 7), ("b", 8)]


def _random_events(rng: random.Random, users: int, count: int, start_ts: int, first_item: int = 0) -> list[Event]:
    actions = ["click", "view", "skip", "impression", "like", "dislike", "purchase"]
    return [
        (
            f"u{rng.randrange(users)}",
            f"i{rng.randrange(first_item, first_item + 30)}",
            rng.choice(actions),
            start_ts + rng.randrange(0, 50) * 10,
        )
        for _ in range(count)
    ]


def test_incremental_equals_full_rebuild(settings: Settings, tmp_path: Path) -> None:
    rng = random.Random(4)
    batches = [_random_events(rng, 20, 150, 0)]
    # Appends after every stored event, new users and items, events that tie with a
    # user's stored last ts, and late events older than the stored tail.
    batches.append(_random_events(rng, 30, 60, 500, first_item=10) + _random_events(rng, 20, 15, 0, first_item=25))
    batches.append(_random_events(rng, 30, 40, 490, first_item=20))
    fresh = get_settings(home=tmp_path / "fresh", features_max_len=3)
    offset = 0
    for number, batch in enumerate(batches):
        version = append_silver(settings, silver_rows(batch, first_offset=offset))
        append_silver(fresh, silver_rows(batch, first_offset=offset))
        offset += len(batch)
        report = build(settings, incremental=number > 0, log=QUIET)
        assert report.mode == ("incremental" if number else "full") and report.silver_version == version
    assert report.new_silver_rows == len(batches[-1])
    incremental = _snapshot(settings)
    users = {event[0] for batch in batches for event in batch}
    assert len(incremental[USER_SEQUENCES_TABLE]) == len(users)

    build(settings, log=QUIET)  # full rebuild over the same vocabulary
    assert _snapshot(settings) == incremental
    build(fresh, log=QUIET)  # and from scratch, in another lake
    assert sequences_by_item_id(fresh) == sequences_by_item_id(settings)


def test_crashed_incremental_build_reruns_safely(settings: Settings) -> None:
    append_silver(settings, silver_rows(EVENTS))
    build(settings, log=QUIET)
    append_silver(settings, silver_rows([("u1", "q", "click", 4000), ("u9", "a", "view", 50)], first_offset=50))

    def crash_after_vocab(message: str) -> None:
        if message.startswith(ITEM_VOCAB_TABLE):
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        build(settings, incremental=True, log=crash_after_vocab)
    report = build(settings, incremental=True, log=QUIET)
    assert [update.written for update in report.tables] == [False, True, True]
    rerun = _snapshot(settings)
    build(settings, log=QUIET)
    assert _snapshot(settings) == rerun


def test_incremental_falls_back_to_full_when_silver_lost_rows(settings: Settings) -> None:
    append_silver(settings, silver_rows(EVENTS))
    build(settings, log=QUIET)
    DeltaTable(settings.table_uri(SILVER_TABLE)).delete("user_id = 'u1'")
    report = build(settings, incremental=True, log=QUIET)
    assert report.mode == "full" and "5 silver rows were removed" in report.fallback_reason
    assert [row["user_id"] for row in table_rows(settings, USER_SEQUENCES_TABLE, "user_id")] == ["u2", "u3"]


def test_incremental_falls_back_to_full_when_max_len_changes(settings: Settings) -> None:
    append_silver(settings, silver_rows(EVENTS))
    build(settings, log=QUIET)
    longer = settings.updated(features_max_len=10)
    report = build(longer, incremental=True, log=QUIET)
    assert report.mode == "full" and "max_len 3" in report.fallback_reason
    assert len(table_rows(longer, USER_SEQUENCES_TABLE, "user_id")[0]["item_indices"]) == 5


def test_compacting_silver_adds_no_new_rows(settings: Settings) -> None:
    append_silver(settings, silver_rows(EVENTS[:4]))
    before = append_silver(settings, silver_rows(EVENTS[4:], first_offset=4))
    DeltaTable(settings.table_uri(SILVER_TABLE)).optimize.compact()
    after = DeltaTable(settings.table_uri(SILVER_TABLE)).version()
    changes = silver_changes(settings.table_uri(SILVER_TABLE), before, after)
    assert (len(changes.new_rows), changes.lost_rows) == (0, 0)
    assert len(silver_changes(settings.table_uri(SILVER_TABLE), 0, after).new_rows) == 4


def test_incremental_falls_back_to_full_when_old_silver_files_are_gone(settings: Settings) -> None:
    append_silver(settings, silver_rows(EVENTS[:4]))
    append_silver(settings, silver_rows(EVENTS[4:], first_offset=4))
    build(settings, log=QUIET)
    append_silver(settings, silver_rows([("u7", "c", "click", 9000)], first_offset=50))
    silver = DeltaTable(settings.table_uri(SILVER_TABLE))
    silver.optimize.compact()
    silver.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    report = build(settings, incremental=True, log=QUIET)
    assert report.mode == "full" and "cannot diff silver versions" in report.fallback_reason
    assert "u7" in [row["user_id"] for row in table_rows(settings, USER_SEQUENCES_TABLE, "user_id")]


def test_incremental_build_after_a_silver_version_without_new_rows(settings: Settings) -> None:
    # Ingestion commits a silver version that adds nothing when every event of a batch was
    # a re-sent duplicate; the build must treat that as "no change", not fail.
    append_silver(settings, silver_rows(EVENTS))
    build(settings, log=QUIET)
    full = _snapshot(settings)
    append_silver(settings, silver_rows(EVENTS[:0]))
    report = build(settings, incremental=True, log=QUIET)
    assert report.mode == "incremental" and report.new_silver_rows == 0
    assert _snapshot(settings) == full


def test_two_builds_at_once_never_give_one_index_two_items(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two incremental builds that both read the vocabulary before either writes (a Dagster run
    and a command, say): one commits, the other is refused with nothing written and, run again,
    continues from what the first wrote. Before, both appended: the next indices twice over."""
    append_silver(settings, silver_rows(EVENTS))
    build(settings, log=QUIET)
    append_silver(settings, silver_rows([("u1", "q", "click", 4000), ("u4", "r", "view", 4100)], first_offset=50))
    both_read = threading.Barrier(2, timeout=60)
    new_items = arrow_jobs.new_items

    def after_both_read(*args: Any) -> Any:
        both_read.wait()
        return new_items(*args)

    one_write_at_a_time = threading.Lock()  # the second commit starts after the first ended
    write = features.build.write_deltalake

    def serialised_write(*args: Any, **kwargs: Any) -> Any:
        with one_write_at_a_time:
            return write(*args, **kwargs)

    monkeypatch.setattr(arrow_jobs, "new_items", after_both_read)
    monkeypatch.setattr(features.build, "write_deltalake", serialised_write)
    outcomes: list[object] = []

    def run() -> None:
        try:
            outcomes.append(build(settings, incremental=True, log=QUIET))
        except ConcurrentBuildError as error:
            outcomes.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    refused = [outcome for outcome in outcomes if isinstance(outcome, ConcurrentBuildError)]
    assert len(outcomes) == 2 and len(refused) == 1, outcomes
    assert "run it again" in str(refused[0])

    monkeypatch.setattr(arrow_jobs, "new_items", new_items)
    build(settings, incremental=True, log=QUIET)  # the refused one, again
    vocab = table_rows(settings, ITEM_VOCAB_TABLE, "item_index")
    assert [row["item_index"] for row in vocab] == list(range(1, 8))
    assert sorted(row["item_id"] for row in vocab) == ["a", "c", "d", "e", "q", "r", "z"]
    sequences = {row["user_id"]: row for row in table_rows(settings, USER_SEQUENCES_TABLE, "user_id")}
    assert sequences["u4"]["item_indices"] == [7] and sequences["u1"]["item_indices"][-1] == 6

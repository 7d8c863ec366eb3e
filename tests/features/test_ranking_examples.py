"""features/ranking_examples: exposures, window edges, no leakage, splits, incremental == full."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from featuredata import Event, append_silver, silver_rows, table_rows

from features.build import build
from features.ranking import RankingSpec, ranking_rows
from features.ranking_reader import latest_ranking_versions, load_ranking_examples
from features.tables import LABEL_COLUMNS, RANKING_EXAMPLES_TABLE, RANKING_TASKS, ranking_state
from infra.settings import Settings, get_settings
from ingestion.schema import ACTION_IDS

QUIET = lambda message: None  # noqa: E731
W = 100  # window (ms) of the hand-made tests
SPEC = RankingSpec(window_ms=W, max_len=3, validation_from_ts=5_000, test_from_ts=6_000)

# Kafka order is list order. Item x: impression@1000, click@1100 (exactly at the window end:
# counts), like@1101 (past it: opens an organic exposure). Item y: two impressions, then a
# purchase: credited to the second. u1 also has an event at 1000 (z, same ms as x's
# impression, later in Kafka order) that must not be in the history of x@1000.
EVENTS: list[Event] = [
    ("u1", "a", "view", 500),
    ("u1", "x", "impression", 1000),
    ("u1", "z", "skip", 1000),
    ("u1", "x", "click", 1100),
    ("u1", "x", "like", 1101),
    ("u1", "y", "impression", 2000),
    ("u1", "y", "impression", 2050),
    ("u1", "y", "purchase", 2080),
    ("u2", "x", "dislike", 3000),
    ("u2", "x", "share", 3050),
]


@pytest.fixture
def settings(tmp_path: Path, spark: object) -> Settings:
    return get_settings(home=tmp_path, features_max_len=3)


def _rows(settings: Settings) -> list[dict]:
    rows = table_rows(settings, RANKING_EXAMPLES_TABLE, "event_id")
    return sorted(rows, key=lambda row: (row["user_id"], row["ts"], row["kafka_partition"], row["kafka_offset"]))


def _labels(row: dict) -> set[str]:
    return {task for task, name in zip(RANKING_TASKS, LABEL_COLUMNS, strict=True) if row[name]}


def test_known_answers_window_edges_last_touch_and_no_leakage(settings: Settings) -> None:
    append_silver(settings, silver_rows(EVENTS))
    report = build(settings, log=QUIET, ranking=SPEC)
    assert report.versions()[RANKING_EXAMPLES_TABLE] == 0
    vocab = {row["item_id"]: row["item_index"] for row in table_rows(settings, "features/item_vocab", "item_index")}
    rows = _rows(settings)
    summary = [(row["user_id"], row["ts"], row["anchor_action"], _labels(row)) for row in rows]
    assert summary == [
        ("u1", 500, "view", {"click"}),
        ("u1", 1000, "impression", {"click"}),  # click@1100 = 1000 + W counts
        ("u1", 1000, "skip", {"skip"}),
        ("u1", 1101, "like", {"like"}),  # 1101 > 1000 + W: a new, organic exposure
        ("u1", 2000, "impression", set()),  # last touch: the purchase goes to the later impression
        ("u1", 2050, "impression", {"purchase"}),
        ("u2", 3000, "dislike", {"dislike", "like"}),  # share@3050 joins the organic dislike
    ]
    by_ts = {(row["user_id"], row["ts"], row["anchor_action"]): row for row in rows}
    # Strictly before the exposure's ts: z@1000 (same ms, later Kafka order) is not in x@1000's history.
    x = by_ts[("u1", 1000, "impression")]
    assert (x["item_indices"], x["actions"], x["timestamps"]) == ([vocab["a"]], ["view"], [500])
    assert x["item_index"] == vocab["x"]
    # Nor x@1000 in z@1000's (same ms, earlier Kafka order).
    assert by_ts[("u1", 1000, "skip")]["timestamps"] == [500]
    # The last max_len (3) events before ts, in event order (ties in Kafka order).
    assert by_ts[("u1", 2050, "impression")]["actions"] == ["click", "like", "impression"]
    assert by_ts[("u1", 1101, "like")]["actions"] == ["impression", "skip", "click"]
    assert by_ts[("u1", 500, "view")]["item_indices"] == []
    assert {row["split"] for row in rows} == {"train"}
    state = ranking_state(settings.table_uri(RANKING_EXAMPLES_TABLE))
    assert state is not None and (state.window_ms, state.max_len, state.watermark_ts) == (W, 3, 3050)
    assert (state.validation_from_ts, state.test_from_ts) == (5_000, 6_000)


def test_window_zero_and_same_ms_actions() -> None:
    events = [("u", "i1", "impression", 10), ("u", "i1", "click", 10), ("u", "i1", "like", 11)]
    rows = ranking_rows(_kernel_input(events), 0, 5)
    assert [(row["ts"], row["anchor_action"], row["label_click"], row["label_like"]) for row in rows.to_pylist()] == [
        (10, "impression", True, False),
        (11, "like", False, True),
    ]


def test_reader_pads_drops_open_windows_and_hides_the_anchor_action(settings: Settings) -> None:
    append_silver(settings, silver_rows(EVENTS))
    build(settings, log=QUIET, ranking=SPEC)
    train = load_ranking_examples(settings, "train", max_len=4)
    # Watermark 3050, window 100: u2's exposure at 3000 is still open (3000 + 100 > 3050).
    assert train.user_ids.tolist() == ["u1"] * 6
    assert train.max_len == 4 and train.lengths.tolist() == [0, 1, 1, 3, 3, 3]  # 3 stored
    assert train.action_ids[1].tolist() == [ACTION_IDS["view"], 0, 0, 0]
    assert train.labels.shape == (6, len(RANKING_TASKS)) and train.labels[:, 0].tolist() == [1, 1, 0, 0, 0, 0]
    everything = load_ranking_examples(settings, "train", complete_only=False)
    assert len(everything) == 7 and everything.max_len == 3
    assert load_ranking_examples(settings, "test").candidates.tolist() == []
    assert latest_ranking_versions(settings).as_dict()[RANKING_EXAMPLES_TABLE] == 0


# A brute-force reference of the rules (features.ranking's docstring), one event at a time.


def _reference(events: list[Event], window: int, max_len: int) -> dict[tuple[str, int], tuple]:
    ordered = sorted(enumerate(events), key=lambda pair: (pair[1][0], pair[1][3], pair[0]))
    by_user: dict[str, list[tuple[int, Event]]] = defaultdict(list)
    for offset, event in ordered:
        by_user[event[0]].append((offset, event))
    result = {}
    for user, rows in by_user.items():
        current: dict[str, tuple[int, int]] = {}  # item -> (offset, ts) of its open exposure
        labels: dict[int, set[str]] = {}
        for offset, (_, item, action, ts) in rows:
            opened = current.get(item)
            if action == "impression" or opened is None or ts - opened[1] > window:
                current[item] = (offset, ts)
                labels[offset] = set()
                history = [e for _, e in rows if e[3] < ts][-max_len:]
                result[(user, offset)] = (item, action, ts, [(e[1], e[2], e[3]) for e in history])
            tasks = {task for task, actions in RANKING_TASKS.items() if action in actions}
            labels[current[item][0]] |= tasks
        for (row_user, offset), value in list(result.items()):
            if row_user == user:
                result[(row_user, offset)] = (*value, labels[offset])
    return result


def _kernel_input(events: list[Event]) -> pa.Table:
    return pa.table(
        {
            "event_id": [f"e{offset}" for offset in range(len(events))],
            "user_id": [event[0] for event in events],
            "item_index": pa.array([int(event[1].lstrip("i")) for event in events], pa.int64()),
            "action": [event[2] for event in events],
            "ts": pa.array([event[3] for event in events], pa.int64()),
            "kafka_partition": pa.array([0] * len(events), pa.int32()),
            "kafka_offset": pa.array(range(len(events)), pa.int64()),
        }
    )


def _random_events(rng: random.Random, users: int, count: int, start: int, items: int = 6) -> list[Event]:
    actions = ["impression"] * 4 + ["click", "view", "like", "share", "purchase", "skip", "dislike"]
    return [
        (f"u{rng.randrange(users)}", f"i{rng.randrange(1, items + 1)}", rng.choice(actions), start + rng.randrange(60))
        for _ in range(count)
    ]


@pytest.mark.parametrize("seed", range(5))
def test_kernel_matches_the_brute_force_reference(seed: int) -> None:
    rng = random.Random(seed)
    events = _random_events(rng, 4, 300, 0)  # many ties, repeats and chains of actions per item
    window, max_len = rng.choice([0, 5, 20]), rng.choice([1, 4, 30])
    rows = ranking_rows(_kernel_input(events), window, max_len).to_pylist()
    got = {
        (row["user_id"], row["kafka_offset"]): (
            f"i{row['item_index']}",
            row["anchor_action"],
            row["ts"],
            [(f"i{i}", a, t) for i, a, t in zip(row["item_indices"], row["actions"], row["timestamps"], strict=True)],
            _labels(row),
        )
        for row in rows
    }
    assert got == _reference(events, window, max_len)
    assert [(r["user_id"], r["ts"], r["kafka_offset"]) for r in rows] == sorted(
        (r["user_id"], r["ts"], r["kafka_offset"]) for r in rows
    )


def test_quantile_split_is_kept_by_later_builds(settings: Settings) -> None:
    events = [(f"u{n % 3}", f"i{n % 7}", "impression", 1_000 * n) for n in range(100)]
    append_silver(settings, silver_rows(events))
    build(settings, log=QUIET, ranking=RankingSpec(window_ms=10))
    state = ranking_state(settings.table_uri(RANKING_EXAMPLES_TABLE))
    assert state is not None and (state.validation_from_ts, state.test_from_ts) == (79_000, 89_000)
    splits = {row["ts"]: row["split"] for row in table_rows(settings, RANKING_EXAMPLES_TABLE, "ts")}
    assert splits[78_000] == "train" and splits[79_000] == "validation" and splits[89_000] == "test"
    append_silver(settings, silver_rows([("u0", "i1", "impression", 500_000)], first_offset=100))
    for incremental in (True, False):
        report = build(settings, incremental=incremental, log=QUIET, ranking=RankingSpec(window_ms=10))
        assert report.mode == ("incremental" if incremental else "full")
        state = ranking_state(settings.table_uri(RANKING_EXAMPLES_TABLE))
        assert state is not None and (state.validation_from_ts, state.test_from_ts) == (79_000, 89_000)
    # Other boundaries asked for: a full build.
    report = build(
        settings, incremental=True, log=QUIET,
        ranking=RankingSpec(window_ms=10, validation_from_ts=50_000, test_from_ts=60_000),
    )  # fmt: skip
    assert report.mode == "full" and "split at" in report.fallback_reason
    assert {row["ts"]: row["split"] for row in table_rows(settings, RANKING_EXAMPLES_TABLE, "ts")}[55_000] == (
        "validation"
    )


def _snapshot(settings: Settings) -> list[dict]:
    """Every row, item indices replaced by item ids (comparable across vocabularies)."""
    item_of = {row["item_index"]: row["item_id"] for row in table_rows(settings, "features/item_vocab", "item_index")}
    rows = _rows(settings)
    for row in rows:
        row["item_index"] = item_of[row["item_index"]]
        row["item_indices"] = [item_of[index] for index in row["item_indices"]]
    return rows


def test_incremental_equals_full_rebuild_and_rebuilds_only_what_can_change(settings: Settings, tmp_path: Path) -> None:
    rng = random.Random(7)
    spec = RankingSpec(window_ms=20, max_len=4, validation_from_ts=1_050, test_from_ts=1_100)
    batches = [_random_events(rng, 12, 300, 1_000)]
    # Appends within and past open windows, new users and items, ties with a user's last
    # ts, and late events older than stored rows (they change histories, exposures, labels).
    batches.append(_random_events(rng, 16, 80, 1_055, items=9) + _random_events(rng, 12, 10, 1_000))
    batches.append(_random_events(rng, 16, 40, 1_058, items=9))
    fresh = get_settings(home=tmp_path / "fresh", features_max_len=3)
    offset = 0
    for number, batch in enumerate(batches):
        append_silver(settings, silver_rows(batch, first_offset=offset))
        append_silver(fresh, silver_rows(batch, first_offset=offset))
        offset += len(batch)
        report = build(settings, incremental=number > 0, log=QUIET, ranking=spec)
        assert report.mode == ("incremental" if number else "full")
    incremental = _snapshot(settings)
    build(settings, log=QUIET, ranking=spec)  # full rebuild, same lake
    assert _snapshot(settings) == incremental
    build(fresh, log=QUIET, ranking=spec)  # from scratch in another lake (the same vocabulary here)
    assert _snapshot(fresh) == incremental
    assert len({row["split"] for row in incremental}) == 3

    # One new event of one user: only that user's rows from (its ts - window) on are rebuilt.
    user_rows = [row for row in incremental if row["user_id"] == "u3"]
    last_ts = max(row["ts"] for row in user_rows)
    messages: list[str] = []
    append_silver(settings, silver_rows([("u3", "i2", "click", last_ts + 5)], first_offset=offset))
    report = build(settings, incremental=True, log=messages.append, ranking=spec)
    expected = sum(row["ts"] >= last_ts + 5 - spec.window_ms for row in user_rows)
    ranking_update = report.tables[-1]
    assert ranking_update.table == RANKING_EXAMPLES_TABLE
    opened = 0 if any(r["item_index"] == "i2" and last_ts + 5 - r["ts"] <= 20 for r in user_rows) else 1
    assert ranking_update.rows == expected + opened, messages
    after = _snapshot(settings)
    assert [row for row in after if row["user_id"] != "u3"] == [r for r in incremental if r["user_id"] != "u3"]
    build(settings, log=QUIET, ranking=spec)
    assert _snapshot(settings) == after


def test_a_late_event_that_closes_an_exposure_deletes_rows(settings: Settings) -> None:
    spec = RankingSpec(window_ms=W, max_len=3, validation_from_ts=10_000, test_from_ts=20_000)
    append_silver(settings, silver_rows([("u1", "x", "click", 1000), ("u1", "x", "like", 1150)]))
    build(settings, log=QUIET, ranking=spec)
    assert [row["anchor_action"] for row in _rows(settings)] == ["click", "like"]
    # A late impression@1090 of x: the like@1150 now joins it (50 <= W), no longer its own row.
    append_silver(settings, silver_rows([("u1", "x", "impression", 1090)], first_offset=10))
    report = build(settings, incremental=True, log=QUIET, ranking=spec)
    assert report.mode == "incremental"
    rows = _rows(settings)
    assert [(row["ts"], row["anchor_action"], _labels(row)) for row in rows] == [
        (1000, "click", {"click"}),
        (1090, "impression", {"like"}),
    ]
    build(settings, log=QUIET, ranking=spec)
    assert _rows(settings) == rows


def test_ranking_is_built_only_when_asked_and_then_falls_back_once(settings: Settings) -> None:
    append_silver(settings, silver_rows(EVENTS))
    report = build(settings, log=QUIET)
    assert RANKING_EXAMPLES_TABLE not in report.versions()
    report = build(settings, incremental=True, log=QUIET, ranking=SPEC)
    assert report.mode == "full" and "ranking_examples has no recorded build" in report.fallback_reason
    longer = RankingSpec(window_ms=W, max_len=5, validation_from_ts=5_000, test_from_ts=6_000)
    report = build(settings, incremental=True, log=QUIET, ranking=longer)
    assert report.mode == "full" and "max_len 3" in report.fallback_reason
    assert np.array_equal(load_ranking_examples(settings, "train", complete_only=False).lengths, [0, 1, 1, 4, 5, 5, 0])


def test_cli_defaults_are_the_spec_defaults() -> None:
    from features import cli

    spec = RankingSpec()
    assert (cli.RANKING_WINDOW_S * 1000, cli.RANKING_MAX_LEN) == (spec.window_ms, spec.max_len)

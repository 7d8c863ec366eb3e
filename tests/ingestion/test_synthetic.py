"""The synthetic generator: contract events, time order, determinism, learnable structure."""

from __future__ import annotations

import collections
import itertools
from dataclasses import replace
from typing import Any

import pytest

from ingestion.schema import ACTIONS, POSITIVE_ACTIONS, REQUIRED_FIELDS
from ingestion.synthetic import (
    DAY_MS,
    ItemLaunch,
    SyntheticConfig,
    events_between_days,
    generate_events,
    item_launches,
)

START = 1_700_000_000_000


def _events(**overrides: object) -> list[dict]:
    config = SyntheticConfig(
        **{"users": 300, "items": 2_000, "events": 40_000, "seed": 3, "start_ms": START, **overrides}
    )
    return list(generate_events(config))


def test_events_follow_the_contract_in_strict_time_order() -> None:
    events = _events()
    assert len(events) == 40_000
    for event in events[:2_000]:
        assert set(REQUIRED_FIELDS) <= event.keys() <= set(REQUIRED_FIELDS) | {"dwell_ms", "surface"}
        assert event["action"] in ACTIONS and isinstance(event["ts"], int)
        assert event.get("dwell_ms", 0) >= 0
    timestamps = [event["ts"] for event in events]
    assert all(a < b for a, b in itertools.pairwise(timestamps))
    assert timestamps[0] >= START
    assert len({event["event_id"] for event in events}) == len(events)
    counts = collections.Counter(event["action"] for event in events)
    assert set(counts) == set(ACTIONS)  # every action type, skip and dislike included
    assert all("dwell_ms" not in e for e in events if e["action"] == "impression")


def test_same_config_same_events_and_other_seed_other_events() -> None:
    assert _events(events=2_000) == _events(events=2_000)
    other = _events(events=2_000, seed=4)
    assert {e["event_id"] for e in other}.isdisjoint({e["event_id"] for e in _events(events=2_000)})


@pytest.mark.parametrize("span_days", [28.0, 2.0])
def test_default_clock_ends_before_now(span_days: float) -> None:
    """Session starts never pass the span, however few sessions there are (no future ts)."""
    import time

    events = list(generate_events(SyntheticConfig(users=50, items=200, events=3_000, seed=3, span_days=span_days)))
    now = time.time() * 1000
    assert now - (span_days + 2) * 86_400_000 < events[0]["ts"] < events[-1]["ts"] < now - 12 * 3_600_000


def _positive_sequences(events: list[dict]) -> dict[str, list[str]]:
    sequences: dict[str, list[str]] = collections.defaultdict(list)
    for event in events:
        if event["action"] in POSITIVE_ACTIONS:
            sequences[event["user_id"]].append(event["item_id"])
    return sequences


def test_next_item_beats_popularity_clearly() -> None:
    """Leave-last-out HR@10: a first-order transition model vs the most popular items."""
    sequences = _positive_sequences(_events())
    popularity: collections.Counter[str] = collections.Counter()
    transitions: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for items in sequences.values():
        history = items[:-1]
        popularity.update(history)
        for a, b in itertools.pairwise(history):
            transitions[a][b] += 1
    top = [item for item, _ in popularity.most_common(10)]
    hits_popular = hits_sequential = users = 0
    for items in sequences.values():
        if len(items) < 3:
            continue
        users += 1
        guess = [item for item, _ in transitions[items[-2]].most_common(10)]
        guess += [item for item in top if item not in guess][: 10 - len(guess)]
        hits_sequential += items[-1] in guess
        hits_popular += items[-1] in top
    assert users > 200
    assert hits_sequential / users > 0.4
    assert hits_sequential > 3 * hits_popular


def test_interests_drift_over_time() -> None:
    """A heavy user's early and late items overlap less when drift is on."""

    def overlap(drift: float) -> float:
        sequences = _positive_sequences(_events(drift=drift, users=20, events=30_000))
        scores = []
        for items in sequences.values():
            half = len(items) // 2
            early, late = set(items[:half]), set(items[half:])
            scores.append(len(early & late) / len(early | late))
        return sum(scores) / len(scores)

    assert overlap(0.3) < 0.7 * overlap(0.0)


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ValueError, match="interests_per_user"):
        SyntheticConfig(clusters=2, interests_per_user=3)
    with pytest.raises(ValueError, match="drift"):
        SyntheticConfig(drift=1.5)


DRIFTING: dict[str, Any] = {
    "users": 300,
    "items": 2_000,
    "events": 60_000,
    "clusters": 10,
    "start_ms": START,
    "evergreen_share": 0.1,
}


def _drifting(seed: int, **overrides: object) -> tuple[list[dict], dict[str, ItemLaunch]]:
    config = SyntheticConfig.drifting(**{**DRIFTING, "seed": seed, **overrides})
    return list(generate_events(config)), {launch.item: launch for launch in item_launches(config)}


def test_drifting_items_launch_at_a_steady_rate_and_never_appear_before_it() -> None:
    events, launches = _drifting(seed=1)
    span_ms = SyntheticConfig.drifting().span_days * DAY_MS
    assert all(event["ts"] >= launches[event["item_id"]].launch_ms for event in events)
    later = [launch for launch in launches.values() if launch.launch_ms >= START]
    assert len(later) == 1_000  # initial_item_share 0.5
    assert all(launch.launch_ms < START + span_ms for launch in later)
    # The items that launch later show up in the stream about as often in each quarter of the span.
    shown = {event["item_id"] for event in events}
    quarters = collections.Counter(
        int(4 * (launch.launch_ms - START) / span_ms) for launch in later if launch.item in shown
    )
    assert len(quarters) == 4
    assert max(quarters.values()) < 1.3 * min(quarters.values())
    # New items take a growing share of the stream: launched ones are most of its last quarter.
    last_quarter = [event for event in events if event["ts"] >= START + 0.75 * span_ms]
    new_share = sum(launches[event["item_id"]].launch_ms >= START for event in last_quarter) / len(last_quarter)
    assert new_share > 0.5


@pytest.mark.parametrize("seed", [1, 2])
def test_drifting_popularity_halves_each_half_life_but_evergreens_do_not(seed: int) -> None:
    """Events per half-life of age, of the items launched in the first half of the span: a
    decaying item's count falls by about half per half-life relative to an evergreen's."""
    half_life = 2.0
    events, launches = _drifting(seed, rise_hours=0.0, half_life_days=half_life)
    span_ms = SyntheticConfig.drifting().span_days * DAY_MS
    ratios = {}
    for evergreen in (False, True):
        ages: collections.Counter[int] = collections.Counter()
        for event in events:
            launch = launches[event["item_id"]]
            if launch.evergreen == evergreen and START <= launch.launch_ms < START + span_ms / 2:
                ages[int((event["ts"] - launch.launch_ms) // (half_life * DAY_MS))] += 1
        ratios[evergreen] = sum(ages[age + 1] for age in range(4)) / sum(ages[age] for age in range(4))
    assert ratios[True] > 0.8
    assert 0.4 < ratios[False] / ratios[True] < 0.7


def test_drifting_popularity_rises_after_launch() -> None:
    """A linear rise over 48 h: three times as many events in an item's second day as in its first."""
    events, launches = _drifting(seed=1, rise_hours=48.0, half_life_days=0.0)
    ages: collections.Counter[int] = collections.Counter()
    for event in events:
        launch = launches[event["item_id"]]
        if launch.launch_ms >= START:
            ages[int((event["ts"] - launch.launch_ms) // DAY_MS)] += 1
    assert 2.0 < ages[1] / ages[0] < 4.5


def test_drifting_stream_is_deterministic_and_the_static_one_unchanged() -> None:
    config = SyntheticConfig.drifting(**{**DRIFTING, "events": 3_000, "seed": 5})
    assert list(generate_events(config)) == list(generate_events(config))
    assert item_launches(config) == item_launches(config)
    assert SyntheticConfig().static_catalogue and not config.static_catalogue
    static = SyntheticConfig(**{**DRIFTING, "events": 3_000, "seed": 5, "evergreen_share": 0.0})
    assert all(launch.launch_ms < START for launch in item_launches(static))


def test_invalid_drifting_config_is_refused() -> None:
    with pytest.raises(ValueError, match="initial_item_share"):
        SyntheticConfig(initial_item_share=0.0)
    with pytest.raises(ValueError, match="half_life_days"):
        SyntheticConfig(half_life_days=-1.0)
    with pytest.raises(ValueError, match="evergreen_share"):
        SyntheticConfig(evergreen_share=2.0)


def test_produce_synthetic_options_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """`produce synthetic --catalogue drifting` takes the documented churn; each option overrides it."""
    import typer
    from typer.testing import CliRunner

    from ingestion import cli, synthetic

    configs: list[SyntheticConfig] = []

    def capture(config: SyntheticConfig) -> Any:
        configs.append(config)
        return iter(())

    monkeypatch.setattr(synthetic, "generate_events", capture)
    monkeypatch.setattr(cli, "_send", lambda records, settings, **options: None)
    monkeypatch.setattr(cli, "load_settings", lambda: None)
    monkeypatch.setattr("ingestion.producer.with_bad_records", lambda records, *args: records)
    app = typer.Typer()
    cli.register(app)
    runner = CliRunner()
    assert runner.invoke(app, ["produce", "synthetic"]).exit_code == 0
    drifting_run = runner.invoke(app, ["produce", "synthetic", "--catalogue", "drifting", "--half-life-days", "5"])
    assert drifting_run.exit_code == 0, drifting_run.output
    static, drifting = configs
    assert static.static_catalogue
    assert drifting == SyntheticConfig.drifting(half_life_days=5.0)
    refused = runner.invoke(app, ["produce", "synthetic", "--initial-item-share", "0"])
    assert refused.exit_code == 2 and "initial_item_share" in refused.output
    assert runner.invoke(app, ["produce", "synthetic", "--catalogue", "churny"]).exit_code == 2


def test_a_stream_is_replayed_a_day_at_a_time_only_with_its_clock_set() -> None:
    with pytest.raises(ValueError, match="start_ms"):
        next(events_between_days(SyntheticConfig(events=10), None, 1))


def test_a_drifting_stream_whose_clock_starts_later_is_the_same_stream_shifted() -> None:
    """Life-cycle hours count from the stream's start: a start half an hour later used to
    change the events (the demo's two days held 104/84 or 127/151 events by the minute it ran)."""
    config = SyntheticConfig.drifting(users=200, items=500, events=3_000, seed=0, span_days=10, start_ms=10 * DAY_MS)
    later = replace(config, start_ms=config.start_ms + 1_800_000)  # type: ignore[operator]

    def shape(stream: SyntheticConfig) -> list[tuple[object, ...]]:
        assert stream.start_ms is not None
        return [(e["user_id"], e["item_id"], e["action"], e["ts"] - stream.start_ms) for e in generate_events(stream)]

    assert shape(config) == shape(later)

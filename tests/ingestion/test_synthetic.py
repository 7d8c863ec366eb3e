"""The synthetic generator: contract events, time order, determinism, learnable structure."""

from __future__ import annotations

import collections
import itertools

import pytest

from ingestion.schema import ACTIONS, POSITIVE_ACTIONS, REQUIRED_FIELDS
from ingestion.synthetic import SyntheticConfig, generate_events

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

"""The generator's funnel mode: the ground truth of the ranking tasks (docs/ranking.md)."""

from __future__ import annotations

import collections
import itertools

import numpy as np

from ingestion.schema import REQUIRED_FIELDS
from ingestion.synthetic import SyntheticConfig, Truth, _Generator, generate_events
from training.ranking.metrics import auc

CONFIG = SyntheticConfig(
    users=200, items=400, events=30_000, clusters=20, seed=5, start_ms=1_700_000_000_000, funnel=True
)


def _truth() -> tuple[list[dict], list[Truth]]:
    generator = _Generator(CONFIG, record_truth=True)
    return list(generator), generator.truth or []


def test_funnel_events_follow_the_contract_and_start_with_an_impression() -> None:
    events, truth = _truth()
    assert events == list(generate_events(CONFIG))  # recording the truth draws nothing
    assert all(a["ts"] < b["ts"] for a, b in itertools.pairwise(events))
    for event in events[:2_000]:
        assert set(REQUIRED_FIELDS) <= event.keys() <= set(REQUIRED_FIELDS) | {"dwell_ms", "surface"}
    # Every response follows an impression of the same item by the same user, seconds before.
    shown: dict[tuple[str, str], int] = {}
    for event in events:
        key = (event["user_id"], event["item_id"])
        if event["action"] == "impression":
            shown[key] = event["ts"]
        else:
            assert key in shown and event["ts"] - shown[key] < 600_000
    impressions = sum(event["action"] == "impression" for event in events)
    # Sessions still running when the stream stops were drawn (and recorded) in full.
    assert impressions <= len(truth) < impressions + 200
    assert SyntheticConfig().funnel is False  # the default stream is the single-event one


def test_engagement_follows_the_documented_drivers() -> None:
    _, truth = _truth()
    engaged = np.array([any(a in ("click", "view") for a in t.actions) for t in truth])
    by_relation = collections.defaultdict(list)
    by_past = collections.defaultdict(list)
    for value, t in zip(engaged, truth, strict=True):
        by_relation[t.relation].append(value)
        by_past[t.past].append(value)
    rate = {key: float(np.mean(values)) for key, values in by_relation.items()}
    assert rate["successor"] > rate["session"] + 0.1 and rate["session"] > rate["off"] + 0.15, rate
    past = {key: float(np.mean(values)) for key, values in by_past.items()}
    assert past[""] > past["engaged"] > past["rejected"] * 2
    purchased = np.array(["purchase" in t.actions for t in truth])
    repeat = np.array([t.past == "engaged" for t in truth])
    assert purchased[repeat & engaged].mean() > 4 * purchased[~repeat & engaged].mean()
    oracle = auc(engaged, np.array([t.engage for t in truth]))
    assert 0.72 < oracle < 0.86, oracle
    assert auc(engaged, np.array([t.relation != "off" for t in truth], dtype=float)) < oracle - 0.1

"""The pure bookkeeping of benchmarks/streaming/freshness.py: percentiles, delta sightings, the
follow job's learned rate and the trials' summary."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from benchmarks.streaming.freshness import (
    SequenceSightings,
    learned_rate,
    percentile,
    publish_to_visible,
    spread,
    summarise_trials,
    unseen_deltas,
)


@pytest.mark.parametrize("q", [0, 50, 90, 95, 100])
def test_percentile_is_numpys_linear_one(q: float) -> None:
    values = [3.2, 0.5, 9.0, 1.1, 4.4, 7.7, 2.0]
    assert percentile(values, q) == pytest.approx(round(float(np.percentile(values, q)), 3))


def test_percentile_and_spread_of_nothing_and_one() -> None:
    assert percentile([], 95) is None
    assert spread([]) == {"n": 0, "p50": None, "p95": None, "max": None}
    assert spread([2.5]) == {"n": 1, "p50": 2.5, "p95": 2.5, "max": 2.5}


def test_a_delta_is_visible_at_the_first_answer_naming_it_or_a_later_one() -> None:
    sightings = SequenceSightings()
    sightings.saw(1, 101.0)
    sightings.saw(3, 112.0)  # 2 was applied and passed between two answers
    sightings.saw(1, 100.5)  # an earlier answer arriving later keeps the earliest time
    assert sightings.visible_at(1) == 100.5
    assert sightings.visible_at(2) == 112.0
    assert sightings.visible_at(4) is None
    published = {1: 99_000, 2: 110_000, 3: 111_000, 4: 130_000, 0: 50_000}
    assert publish_to_visible(published, sightings, after_s=90.0) == pytest.approx([1.5, 2.0, 1.0])
    assert publish_to_visible(published, sightings, after_s=105.0) == pytest.approx([2.0, 1.0])
    assert unseen_deltas(published, sightings, after_s=90.0, before_s=140.0) == 1
    assert unseen_deltas(published, sightings, after_s=90.0, before_s=125.0) == 0


def test_learned_rate_uses_the_cumulative_counts_inside_the_window() -> None:
    line = "delta bench v3 #{}: {} events learned, 10 steps, 5 rows, 0 new items, encoder yes, silver v9 (lag 0)"
    lines = [(5.0, line.format(1, "100")), (10.0, line.format(2, "1,100")), (20.0, line.format(3, "3,100")),
             (21.0, "a line of something else"), (40.0, line.format(4, "9,000"))]  # fmt: skip
    assert learned_rate(lines, 8.0, 30.0) == {"deltas": 2, "events": 2_000, "events_per_s": 200.0}
    assert learned_rate(lines, 30.0, 50.0) == {"deltas": 1, "events": None, "events_per_s": None}


def test_summarise_trials_counts_misses_and_checks_the_lineage() -> None:
    trials: list[dict[str, Any]] = [
        {"retrieve_s": 10.0, "recommend_s": 11.0, "retrieve_sequence": 4, "brought_by": 4},
        {"retrieve_s": 30.0, "recommend_s": None, "retrieve_sequence": 6, "brought_by": 7},  # older than the bringer
        {"retrieve_s": None, "recommend_s": None, "retrieve_sequence": None, "brought_by": None},  # never found
    ]
    summary = summarise_trials(trials)
    assert summary["trials"] == 3
    assert (summary["found_in_retrieve"], summary["found_in_recommend"]) == (2, 1)
    assert summary["retrieve_s"] == {"n": 2, "p50": 20.0, "p95": 29.0, "max": 30.0}
    assert summary["lineage_names_bringing_delta"] == 1
    assert summary["met"] is False  # a trial never found fails the target whatever the others' p95
    assert summarise_trials(trials[:1])["met"] is True
    assert summarise_trials([])["met"] is False

"""The serving benchmark's p99 verdict at the knee: the median ratio of side-by-side pairs, each
pair counted only where the no-op held the rate beside /recommend."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.serve.run import median_p99_ratio, p99_verdict, pair_figures, swap_rate

HOLD_P99_MS = 250.0


def run(achieved: float, p99_ms: float, errors: int = 0) -> dict[str, Any]:
    """The figures of one load run at 350/s, as ``measure`` returns them."""
    return {
        "target_qps": 350.0,
        "achieved_qps": achieved,
        "errors": errors,
        "p50_ms": p99_ms / 4,
        "p99_ms": p99_ms,
        "cpu_ms_per_request_total": 6.0,
    }


def pair(noop: dict[str, Any], recommend: dict[str, Any]) -> dict[str, Any]:
    return pair_figures(noop, recommend, HOLD_P99_MS, first=0)


def test_two_saturated_queues_are_not_a_pass() -> None:
    # The first run at 350/s (benchmarks/results/serve_100k.json as of 6d532ee): the no-op failed the rate
    # beside /recommend, so their ratio (1.44) measures two overloaded queues.
    saturated = pair(run(346.0, 1228.2, errors=63), run(331.9, 1767.9, errors=4))
    assert saturated["p99_ratio"] is None
    assert p99_verdict([saturated]) is None


def test_the_median_of_the_pairs_decides() -> None:
    held = run(350.0, 60.0)
    under = pair(held, run(349.0, 110.0))  # 1.83
    over = pair(held, run(349.0, 130.0))  # 2.17
    assert under["p99_ratio"] == 1.83 and over["p99_ratio"] == 2.17
    assert p99_verdict([under]) is True
    assert p99_verdict([over]) is False
    # One pair at the knee swings several-fold; the median of five does not follow the outlier.
    spiky = pair(held, run(349.0, 400.0))
    assert p99_verdict([under, spiky, under, under, over]) is True
    assert p99_verdict([over, spiky, under, over, under]) is False


def test_recommend_falling_behind_counts_as_infinitely_slow() -> None:
    behind = pair(run(350.0, 200.0), run(300.0, 390.0))  # 1.95, but 300 of 350/s
    assert behind["p99_ratio"] is None and not behind["recommend_keeps_up"]
    assert p99_verdict([behind]) is False
    fine = pair(run(350.0, 100.0), run(349.0, 120.0))
    assert median_p99_ratio([fine, behind, behind]) == float("inf")


def test_pairs_where_the_noop_did_not_hold_are_left_out() -> None:
    fine = pair(run(350.0, 100.0), run(349.0, 150.0))  # 1.5
    noop_stalled = pair(run(350.0, 600.0), run(349.0, 150.0))  # the no-op's p99 over the hold limit
    assert median_p99_ratio([fine, noop_stalled, fine]) == 1.5
    # Fewer than half of the pairs measured anything: no verdict.
    assert median_p99_ratio([fine, noop_stalled, noop_stalled]) is None
    assert p99_verdict([]) is None


def test_the_swap_runs_at_a_rate_recommend_held_not_one_it_only_survived() -> None:
    # A benchmark run on 2026-12-06 under the old rule (not kept in benchmarks/results): /recommend answered
    # every request at 300/s but with a p99 of 1.4 s, the promotion ran there, and 996 requests failed.
    def load(rate: float, achieved: float, p99_ms: float) -> dict[str, Any]:
        return {"endpoint": "/recommend", "rate": rate, **run(achieved, p99_ms)} | {"target_qps": rate}

    rows = [load(300.0, 292.0, 1405.8), load(150.0, 150.0, 90.0), load(10.0, 10.0, 22.0)]
    assert swap_rate(rows, 10.0, HOLD_P99_MS) == 150.0
    assert swap_rate([load(300.0, 292.0, 1405.8)], 10.0, HOLD_P99_MS) == 10.0


def test_a_capacity_ladder_retries_a_failed_step_once_and_stops_at_a_second_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from benchmarks.serve import run as bench

    # (rate, attempt) -> p99: 200/s fails once then holds, 300/s fails twice; 400/s is never tried.
    p99s = {(100, 0): 10.0, (200, 0): 2_000.0, (200, 1): 20.0, (300, 0): 3_000.0, (300, 1): 3_000.0}
    tried = []

    def measure(settings: object, path: str, rate: float, duration: float, users: list[str], seed: int) -> dict:
        tried.append((rate, seed - int(rate)))
        return {"target_qps": rate, "achieved_qps": rate, "errors": 0, "p50_ms": 1.0,
                "p99_ms": p99s[(rate, seed - int(rate))]}  # fmt: skip

    monkeypatch.setattr(bench, "measure", measure)
    monkeypatch.setattr(bench, "log", lambda *_: None)
    monkeypatch.setattr(bench, "summary_line", lambda _: "")
    best, steps = bench.ladder(None, [], "/recommend", [100, 200, 300, 400], 5.0, 1_000.0)  # type: ignore[arg-type]
    assert best == 200 and tried == [(100, 0), (200, 0), (200, 1), (300, 0), (300, 1)]
    assert [step["holds"] for step in steps] == [True, False, True, False, False]
    assert [step.get("retry", False) for step in steps] == [False, False, True, False, True]

"""The freshness policy of the promotion gate, on its own: the rule (``decide``) and which
evaluation ``compare`` runs (the most recent window for a candidate on newer data, validation
otherwise), with the evaluations replaced."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from infra.settings import Settings
from workflows import promotion
from workflows.promotion import FRESHNESS_GATE, Comparison, GatePolicy, decide
from workflows.resources import PromotionPolicy

OLD = {"features/item_vocab": 3, "features/user_sequences": 4}
NEW = {"features/item_vocab": 5, "features/user_sequences": 6}
NEWEST = {"features/item_vocab": 7, "features/user_sequences": 8}  # events after the candidate's landed
DATA_END = {4: 1_000, 6: 9_000}  # the newest event of each user_sequences version (OLD, NEW)
WINDOW = {"start_ms": 1_000, "length_ms": 86_400_000, "targets": 800}


def fresh(candidate: float, production: float | None, **window: Any) -> Comparison:
    """A window comparison: the candidate on NEW features, production on OLD."""
    return Comparison(
        model="m",
        candidate_version="2",
        candidate_run_id="run",
        feature_versions=NEW,
        candidate_metrics={"window_ndcg_10": candidate, "window_unknown_target_share": 0.0},
        production_version="1",
        production_metrics={} if production is None else {"window_ndcg_10": production},
        production_feature_versions=OLD,
        window={**WINDOW, **window},
    )


@pytest.mark.parametrize(
    ("candidate", "production", "promote"),
    [
        (0.120, 0.100, True),  # better
        (0.100, 0.100, True),  # a tie: newer data is worth it
        (0.096, 0.100, True),  # 4% worse, within the 5% tolerance
        (0.095, 0.100, True),  # exactly at the tolerance
        (0.094, 0.100, False),  # 6% worse
        (0.000, 0.000, True),
    ],
)
def test_a_fresher_candidate_passes_unless_worse_than_the_tolerance(
    candidate: float, production: float, promote: bool
) -> None:
    decision = decide(fresh(candidate, production), FRESHNESS_GATE)
    assert decision.promote is promote and decision.label == ("promoted" if promote else "refused")
    assert decision.candidate_value == candidate and decision.production_value == production
    assert decision.threshold == pytest.approx(production * 0.95)
    assert "production v1" in decision.reason and "the 24 h after the candidate's data" in decision.reason
    if not promote:
        assert "more than the tolerance 5%" in decision.reason and "the alias stays" in decision.reason


def test_an_empty_or_impossible_window_refuses_with_the_reason() -> None:
    empty = decide(fresh(math.nan, None, targets=0), FRESHNESS_GATE)
    assert not empty.promote and "holds no positive event" in empty.reason
    error = "the window starts before the first event"
    impossible = decide(fresh(math.nan, None, targets=0, error=error), FRESHNESS_GATE)
    assert not impossible.promote and "before the first event" in impossible.reason


def test_a_window_with_too_few_targets_refuses() -> None:
    """The demo's case: a 24 h window held 3 target events and both models scored 0.0000; the
    candidate was promoted on that."""
    few = decide(fresh(0.0, 0.0, targets=3), FRESHNESS_GATE)
    assert not few.promote and few.label == "refused"
    assert "holds 3 target events, fewer than the 200" in few.reason and "min_window_targets" in few.reason
    enough = decide(fresh(0.0, 0.0, targets=3), replace(FRESHNESS_GATE, min_window_targets=3))
    assert enough.promote
    with pytest.raises(ValueError, match="min_window_targets"):
        replace(FRESHNESS_GATE, min_window_targets=0)


def test_unknown_targets_and_nan() -> None:
    blind = replace(fresh(0.1, 0.1), candidate_metrics={"window_unknown_target_share": 1.0})
    decision = decide(blind, FRESHNESS_GATE)
    assert not decision.promote and "the candidate knows none" in decision.reason
    stale = decide(fresh(0.05, None), FRESHNESS_GATE)  # production knows none of the window's targets
    assert stale.promote and "knows none" in stale.reason and stale.production_value is None
    assert not decide(fresh(math.nan, 0.1), FRESHNESS_GATE).promote


def test_without_newer_data_the_margin_rule_judges() -> None:
    same = Comparison("m", "2", "run", OLD, {"val_ndcg_10": 0.1005}, "1", {"val_ndcg_10": 0.100})
    decision = decide(same, FRESHNESS_GATE)
    assert not decision.promote and "not trained on newer data" in decision.reason
    assert decide(replace(same, candidate_metrics={"val_ndcg_10": 0.2}), FRESHNESS_GATE).promote


def test_policies_validate_and_survive_json() -> None:
    for bad in ({"kind": "newest"}, {"tolerance": 1.0}, {"tolerance": -0.1}, {"window_hours": 0}):
        with pytest.raises(ValueError):
            GatePolicy(**bad)
    assert GatePolicy().kind == "margin" and FRESHNESS_GATE.kind == "freshness" == PromotionPolicy().kind
    assert PromotionPolicy(kind="freshness", tolerance=0.1).policy() == replace(FRESHNESS_GATE, tolerance=0.1)
    assert FRESHNESS_GATE.window_ms == 86_400_000
    comparison = fresh(0.1, 0.1)
    assert Comparison.from_json(comparison.to_json()) == comparison


class _Calls:
    """The evaluations ``compare`` asked for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, production: str | None, targets: int = 800) -> None:
        self.window: list[tuple[str, dict[str, int], int | None]] = []
        self.new_after: list[int | None] = []
        self.validation: list[str] = []
        versions = {"1": OLD, "2": NEW, "3": NEW}
        client = SimpleNamespace(get_model_version=lambda name, version: SimpleNamespace(run_id=f"run{version}"))
        monkeypatch.setattr("training.common.tracking.client", lambda settings: client)
        monkeypatch.setattr("serving.registry.served_version", lambda settings, name=None: production)
        monkeypatch.setattr(promotion, "model_feature_versions", lambda settings, version, task: versions[version])
        monkeypatch.setattr(promotion, "newest_feature_versions", lambda settings: NEWEST)
        monkeypatch.setattr(promotion, "data_end_ms", lambda settings, at: DATA_END[at["features/user_sequences"]])

        def window_at(
            settings: Settings,
            version: str,
            at: dict[str, int],
            window_ms: int,
            start_ms: int | None = None,
            new_after_ms: int | None = None,
        ) -> tuple[dict[str, Any], dict[str, float]]:
            self.window.append((version, at, start_ms))
            self.new_after.append(new_after_ms)
            found = {"start_ms": 5_000 if start_ms is None else start_ms, "length_ms": window_ms, "targets": targets}
            return found, ({"window_ndcg_10": 0.1 if version == "1" else 0.11} if targets else {})

        def validation_at(settings: Settings, version: str, at: dict[str, int]) -> dict[str, float]:
            self.validation.append(version)
            return {"val_ndcg_10": 0.1}

        monkeypatch.setattr(promotion, "evaluate_window_at", window_at)
        monkeypatch.setattr(promotion, "evaluate_at", validation_at)


def test_compare_scores_both_on_the_events_after_the_candidates_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Neither model trained on the window: it starts at the candidate's newest event and is read
    at the newest feature versions (the candidate's own would hold only events it learned from)."""
    settings = Settings(home=tmp_path)
    calls = _Calls(monkeypatch, production="1")
    comparison = promotion.compare(settings, "2", policy=FRESHNESS_GATE)
    assert calls.window == [("2", NEWEST, 9_000), ("1", NEWEST, 9_000)] and not calls.validation
    # New items: launched after production's data, which only the candidate can know.
    assert calls.new_after == [DATA_END[OLD["features/user_sequences"]]] * 2
    assert comparison.window == {
        "start_ms": 9_000, "length_ms": 86_400_000, "targets": 800, "feature_versions": NEWEST,
        "new_after_ms": DATA_END[OLD["features/user_sequences"]],
    }  # fmt: skip
    assert comparison.feature_versions == NEW and comparison.production_feature_versions == OLD
    assert decide(comparison, FRESHNESS_GATE).promote

    calls = _Calls(monkeypatch, production="1")
    assert promotion.compare(settings, "2", policy=GatePolicy()).window is None  # the margin policy
    assert calls.validation == ["2", "1"] and not calls.window

    calls = _Calls(monkeypatch, production="2")
    assert promotion.compare(settings, "3", policy=FRESHNESS_GATE).window is None  # the same data: validation
    assert calls.validation == ["3", "2"]


def test_compare_never_scores_production_on_an_empty_window(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    calls = _Calls(monkeypatch, production="1", targets=0)
    comparison = promotion.compare(Settings(home=tmp_path), "2", policy=FRESHNESS_GATE)
    assert [version for version, _, _ in calls.window] == ["2"]
    decision = decide(comparison, FRESHNESS_GATE)
    assert not decision.promote and "holds no positive event" in decision.reason
    assert "until events after the candidate's data fill it" in decision.reason

"""The gate's rule, on its own (``workflows.promotion.decide``)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from workflows.promotion import RANKING_GATE, Comparison, GatePolicy, decide

VERSIONS = {"features/item_vocab": 3, "features/user_sequences": 4}


def comparison(candidate: float, production: float | None, production_version: str | None = "1") -> Comparison:
    return Comparison(
        model="m",
        candidate_version="2",
        candidate_run_id="run",
        feature_versions=VERSIONS,
        candidate_metrics={"val_ndcg_10": candidate, "val_hr_10": 0.5},
        production_version=production_version if production is not None else None,
        production_metrics=None if production is None else {"val_ndcg_10": production, "val_hr_10": 0.9},
    )


def test_the_first_candidate_is_promoted() -> None:
    decision = decide(comparison(0.0, None), GatePolicy())
    assert decision.promote and decision.label == "first"


@pytest.mark.parametrize(
    ("candidate", "production", "policy", "promote"),
    [
        (0.105, 0.100, GatePolicy(margin=0.01), True),  # +5% > 1%
        (0.1009, 0.100, GatePolicy(margin=0.01), False),  # +0.9% < 1%
        (0.100, 0.100, GatePolicy(margin=0.0), False),  # a tie is not a win
        (0.1001, 0.100, GatePolicy(margin=0.0), True),
        (0.090, 0.100, GatePolicy(margin=0.0), False),  # worse
        (0.115, 0.100, GatePolicy(margin=0.02, margin_kind="absolute"), False),  # +0.015 < 0.02
        (0.125, 0.100, GatePolicy(margin=0.02, margin_kind="absolute"), True),
        (0.001, 0.000, GatePolicy(margin=0.5), True),  # relative to 0: anything above it
    ],
)
def test_a_candidate_must_beat_production_by_the_margin(
    candidate: float, production: float, policy: GatePolicy, promote: bool
) -> None:
    decision = decide(comparison(candidate, production), policy)
    assert decision.promote is promote
    assert decision.label == ("promoted" if promote else "refused")
    assert decision.threshold is not None and (candidate > decision.threshold) is promote
    assert f"{candidate:.4f}" in decision.reason and "production v1" in decision.reason


def test_other_metrics_can_decide() -> None:
    # val_hr_10: candidate 0.5 vs production 0.9 -> refused although ndcg_10 would pass
    assert not decide(comparison(0.2, 0.1), GatePolicy(metric="hr_10")).promote
    with pytest.raises(ValueError, match="val_mrr"):
        decide(comparison(0.2, 0.1), GatePolicy(metric="mrr"))


def test_nan_and_the_production_version_itself_are_never_promoted() -> None:
    assert not decide(comparison(math.nan, 0.1), GatePolicy()).promote
    same = comparison(0.2, 0.2, production_version="2")
    decision = decide(same, GatePolicy())
    assert not decision.promote and decision.label == "unchanged"


def test_policies_validate() -> None:
    with pytest.raises(ValueError):
        GatePolicy(margin=-0.1)
    with pytest.raises(ValueError):
        GatePolicy(margin_kind="percent")  # type: ignore[arg-type]
    assert GatePolicy().threshold(0.2) == pytest.approx(0.202)
    assert GatePolicy(margin=0.05, margin_kind="absolute").threshold(0.2) == pytest.approx(0.25)


def test_the_ranking_gate_wants_validation_click_auc_above_production_by_an_absolute_margin() -> None:
    ranking = Comparison(
        model="streamrec-ranking",
        candidate_version="2",
        candidate_run_id="run",
        feature_versions={"features/item_vocab": 3, "features/ranking_examples": 5},
        candidate_metrics={"val_auc_click": 0.623, "val_auc_like": 0.5},
        production_version="1",
        production_metrics={"val_auc_click": 0.620, "val_auc_like": 0.7},
        task="ranking",
    )
    decision = decide(ranking, RANKING_GATE)
    assert decision.promote and decision.threshold == pytest.approx(0.622)  # +0.003 > +0.002
    assert not decide(replace(ranking, candidate_metrics={"val_auc_click": 0.6215}), RANKING_GATE).promote
    assert decide(replace(ranking, production_version=None, production_metrics=None), RANKING_GATE).label == "first"
    assert Comparison.from_json(ranking.to_json()) == ranking  # the task survives the asset metadata
    recorded = json.loads(ranking.to_json())
    del recorded["task"]  # an evaluation recorded before the ranking gate existed
    assert Comparison(**recorded).task == "retrieval"

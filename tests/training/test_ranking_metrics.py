"""AUC, GAUC, logloss and calibration against brute-force and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.ranking.metrics import auc, average_ranks, calibration, gauc, logloss, task_metrics


def _pairs_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Every (positive, negative) pair: 1 when the positive scores higher, 1/2 on a tie."""
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_auc_by_hand() -> None:
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert auc(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5  # a tie counts one half
    assert auc(np.array([1, 1, 0]), np.array([0.9, 0.2, 0.1])) == 1.0
    assert math.isnan(auc(np.array([1, 1]), np.array([0.3, 0.4])))


@pytest.mark.parametrize("seed", range(6))
def test_auc_and_gauc_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = 300
    users = rng.integers(0, 12, rows)
    labels = rng.integers(0, 2, rows)
    scores = np.round(rng.random(rows) + 0.3 * labels, 1)  # many ties
    assert auc(labels, scores) == pytest.approx(_pairs_auc(labels, scores))
    per_user, weights = [], []
    for user in np.unique(users):
        mine = users == user
        if 0 < labels[mine].sum() < mine.sum():  # both classes only
            per_user.append(_pairs_auc(labels[mine], scores[mine]))
            weights.append(mine.sum())  # weighted by the user's impressions
    assert gauc(labels, scores, users) == pytest.approx(np.average(per_user, weights=weights))


def test_gauc_by_hand_skips_one_class_users() -> None:
    labels = np.array([1, 0, 0, 1, 0, 1, 1])
    scores = np.array([0.9, 0.1, 0.5, 0.2, 0.6, 0.3, 0.3])
    users = np.array(["a", "a", "a", "b", "b", "c", "c"])  # c has positives only: no AUC
    # a: positive 0.9 beats both negatives -> 1.0 (3 rows); b: 0.2 < 0.6 -> 0.0 (2 rows).
    assert gauc(labels, scores, users) == pytest.approx((3 * 1.0 + 2 * 0.0) / 5)
    assert math.isnan(gauc(np.array([1, 1]), np.array([0.1, 0.2]), np.array(["x", "y"])))


def test_average_ranks_within_groups() -> None:
    ranks = average_ranks(np.array([0.5, 0.1, 0.5, 0.7, 0.2]), np.array([0, 0, 0, 1, 1]))
    assert ranks.tolist() == [2.5, 1.0, 2.5, 2.0, 1.0]


def test_logloss_by_hand() -> None:
    labels, p = np.array([1, 0, 1]), np.array([0.8, 0.4, 0.5])
    expected = -(math.log(0.8) + math.log(0.6) + math.log(0.5)) / 3
    assert logloss(labels, p) == pytest.approx(expected)
    assert logloss(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-7))  # clipped, finite


def test_calibration_deciles() -> None:
    p = np.arange(20) / 20
    labels = (np.arange(20) >= 10).astype(float)
    table = calibration(labels, p, bins=10)
    assert len(table) == 10 and all(row["rows"] == 2 for row in table)
    assert table[0] == {"predicted": pytest.approx(0.025), "observed": 0.0, "rows": 2.0}
    assert table[-1]["observed"] == 1.0 and table[-1]["predicted"] == pytest.approx(0.925)


def test_task_metrics_keys() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (50, 2)).astype(float)
    metrics = task_metrics(labels, rng.random((50, 2)), rng.integers(0, 5, 50), ("click", "like"), "val")
    assert {"val_auc_click", "val_gauc_like", "val_logloss_click", "val_auc_mean"} <= set(metrics)
    assert metrics["val_positive_rate_like"] == labels[:, 1].mean()

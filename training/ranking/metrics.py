"""Metrics of multi-task ranking: AUC, GAUC, logloss and calibration by decile (numpy only).

* ``auc``: the probability that a random positive scores above a random negative, ties
  counting one half (Mann-Whitney U from average ranks); NaN without both classes.
* ``gauc``: per-user AUC averaged with weights = the user's number of rows (impressions),
  over users that have both classes only (others have no AUC); NaN when no user qualifies.
* ``logloss``: mean binary cross-entropy, probabilities clipped to [1e-7, 1 - 1e-7].
* ``calibration``: rows cut into ``bins`` equal-count bins by predicted probability
  (deciles by default); per bin the mean prediction, the observed positive rate and the
  number of rows. A calibrated model has both equal in every bin.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

EPSILON = 1e-7


def average_ranks(scores: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """1-based ranks of ``scores`` (within each group of ``groups``), ties given their mean rank."""
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.zeros(len(scores), dtype=np.int64) if groups is None else np.asarray(groups)
    order = np.lexsort((scores, groups))
    sorted_scores, sorted_groups = scores[order], groups[order]
    count = len(scores)
    position = np.arange(count)
    new_group = np.ones(count, dtype=bool)
    new_group[1:] = sorted_groups[1:] != sorted_groups[:-1]
    group_start = np.maximum.accumulate(np.where(new_group, position, 0))
    new_tie = new_group.copy()
    new_tie[1:] |= sorted_scores[1:] != sorted_scores[:-1]
    tie_id = np.cumsum(new_tie) - 1
    tie_start = np.flatnonzero(new_tie)
    tie_end = np.append(tie_start[1:], count)
    mean_rank = (tie_start + tie_end + 1) / 2.0 - group_start[tie_start]  # 1-based, within the group
    ranks = np.empty(count)
    ranks[order] = mean_rank[tie_id]
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of ``scores`` for binary ``labels``; NaN unless both classes occur."""
    labels = np.asarray(labels).astype(bool)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def gauc(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> float:
    """Per-user AUC weighted by each user's number of rows, over users with both classes."""
    labels = np.asarray(labels).astype(bool)
    _, user_of = np.unique(np.asarray(users), return_inverse=True)
    ranks = average_ranks(scores, user_of)
    rows = np.bincount(user_of).astype(np.float64)
    positives = np.bincount(user_of, weights=labels.astype(np.float64), minlength=len(rows))
    negatives = rows - positives
    rank_sum = np.bincount(user_of, weights=np.where(labels, ranks, 0.0), minlength=len(rows))
    both = (positives > 0) & (negatives > 0)
    if not both.any():
        return float("nan")
    per_user = (rank_sum[both] - positives[both] * (positives[both] + 1) / 2.0) / (positives[both] * negatives[both])
    return float(np.average(per_user, weights=rows[both]))


def logloss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean binary cross-entropy; NaN for no rows."""
    labels = np.asarray(labels, dtype=np.float64)
    if len(labels) == 0:
        return float("nan")
    p = np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1.0 - EPSILON)
    return float(-np.mean(labels * np.log(p) + (1.0 - labels) * np.log(1.0 - p)))


def calibration(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Per equal-count bin of predictions (lowest first): mean predicted, observed rate, rows."""
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(probabilities, kind="stable")
    table = []
    for part in np.array_split(order, bins):
        if len(part):
            table.append(
                {
                    "predicted": float(probabilities[part].mean()),
                    "observed": float(labels[part].mean()),
                    "rows": float(len(part)),
                }
            )
    return table


def task_metrics(
    labels: np.ndarray, probabilities: np.ndarray, users: np.ndarray, tasks: Sequence[str], split: str
) -> dict[str, float]:
    """MLflow metrics of a split: ``{split}_auc_{task}``, ``{split}_gauc_{task}``,
    ``{split}_logloss_{task}``, ``{split}_positive_rate_{task}`` for every task, and their
    means over the tasks (``{split}_auc_mean`` ...) for labels and probabilities (N, T)."""
    metrics: dict[str, float] = {}
    for column, task in enumerate(tasks):
        y, p = labels[:, column], probabilities[:, column]
        metrics[f"{split}_auc_{task}"] = auc(y, p)
        metrics[f"{split}_gauc_{task}"] = gauc(y, p, users)
        metrics[f"{split}_logloss_{task}"] = logloss(y, p)
        metrics[f"{split}_positive_rate_{task}"] = float(np.mean(y)) if len(y) else float("nan")
    for name in ("auc", "gauc", "logloss"):
        values = [metrics[f"{split}_{name}_{task}"] for task in tasks]
        finite = [value for value in values if np.isfinite(value)]
        metrics[f"{split}_{name}_mean"] = float(np.mean(finite)) if finite else float("nan")
    return metrics


def calibration_tables(
    labels: np.ndarray, probabilities: np.ndarray, tasks: Sequence[str], bins: int = 10
) -> dict[str, list[dict[str, float]]]:
    """``calibration`` of every task: {task: bins}."""
    return {task: calibration(labels[:, column], probabilities[:, column], bins) for column, task in enumerate(tasks)}


def plot_calibration(tables: dict[str, list[dict[str, float]]], path: Path, title: str = "") -> Path:
    """A PNG of predicted vs observed rate per decile, one panel per task (log-log axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(tables), figsize=(3.2 * len(tables), 3.4), squeeze=False)
    for axis, (task, rows) in zip(axes[0], tables.items(), strict=True):
        predicted = [row["predicted"] for row in rows]
        observed = [row["observed"] for row in rows]
        low = max(min([*predicted, *[o for o in observed if o > 0]], default=1e-3) / 2, 1e-4)
        axis.plot([low, 1], [low, 1], color="grey", linewidth=0.8)
        axis.plot(predicted, np.maximum(observed, low), marker="o")
        axis.set(title=task, xlabel="predicted", ylabel="observed", xscale="log", yscale="log")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path

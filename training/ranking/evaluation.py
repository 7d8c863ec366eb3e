"""Scoring a split of RankingExamples, and the popularity baseline of ranking.

``predict`` runs any batch scorer (``RankingScorer.score_batch``, the popularity baseline's)
over the valid rows of a split and returns what the metrics need; ``evaluate`` turns that
into MLflow metrics and calibration tables (``training.ranking.metrics``).

The popularity baseline scores a candidate by its positive rate per task in the train split,
smoothed towards the task's overall rate (``(positives + m * rate) / (rows + m)``, m =
``PRIOR_ROWS``), so items seen rarely or never get about the overall rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from features.ranking_reader import RankingExamples
from training.ranking.metrics import calibration_tables, task_metrics

PRIOR_ROWS = 20.0
BatchScorer = Callable[[dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class Predictions:
    """Probabilities (N, T), labels (N, T) and user ids (N,) of the valid rows of a split."""

    probabilities: np.ndarray
    labels: np.ndarray
    users: np.ndarray

    @staticmethod
    def concatenate(parts: list[Predictions]) -> Predictions:
        return Predictions(
            np.concatenate([part.probabilities for part in parts]),
            np.concatenate([part.labels for part in parts]),
            np.concatenate([part.users for part in parts]),
        )


def predict(score: BatchScorer, examples: RankingExamples, batch_size: int = 512) -> Predictions:
    """Probabilities of every valid row of ``examples``, in row order."""
    probabilities, labels = [], []
    for batch in examples.batches(batch_size):
        keep = batch["valid"]
        if keep.any():
            probabilities.append(score({key: value[keep] for key, value in batch.items()}).float().numpy())
            labels.append(batch["labels"][keep].numpy())
    tasks = len(examples.tasks)
    return Predictions(
        np.concatenate(probabilities) if probabilities else np.zeros((0, tasks), np.float32),
        np.concatenate(labels) if labels else np.zeros((0, tasks), np.float32),
        examples.user_ids[examples.valid_mask],
    )


def evaluate(
    predictions: Predictions, tasks: tuple[str, ...], split: str
) -> tuple[dict[str, float], dict[str, list[dict[str, float]]]]:
    """(MLflow metrics ``{split}_auc_{task}``..., calibration tables per task) of a split."""
    metrics = task_metrics(predictions.labels, predictions.probabilities, predictions.users, tasks, split)
    metrics[f"{split}_examples"] = float(len(predictions.users))
    return metrics, calibration_tables(predictions.labels, predictions.probabilities, tasks)


class PopularityRanker:
    """Per-item positive rates of every task in the train split (smoothed)."""

    def __init__(self, train: RankingExamples, num_items: int) -> None:
        valid = train.valid_mask
        items = train.candidates[valid]
        labels = train.labels[valid].astype(np.float64)
        rows = np.bincount(items, minlength=num_items + 1)[: num_items + 1].astype(np.float64)
        overall = labels.mean(0) if len(labels) else np.zeros(labels.shape[1])
        rates = np.empty((num_items + 1, labels.shape[1]))
        for task in range(labels.shape[1]):
            positives = np.bincount(items, weights=labels[:, task], minlength=num_items + 1)[: num_items + 1]
            rates[:, task] = (positives + PRIOR_ROWS * overall[task]) / (rows + PRIOR_ROWS)
        self.rates = torch.from_numpy(rates.astype(np.float32))
        self.overall = torch.from_numpy(overall.astype(np.float32))
        self.num_items = num_items

    def score_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        candidates = batch["candidates"]
        known = candidates <= self.num_items
        scores = self.rates[candidates.clamp(max=self.num_items)]
        return torch.where(known.unsqueeze(1), scores, self.overall.expand_as(scores))

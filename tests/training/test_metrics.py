"""Ranking metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.retrieval.metrics import mask_seen, prefixed, ranking_metrics, sampled_ranks


def test_mask_seen_removes_history_and_padding_only() -> None:
    scores = torch.arange(6, dtype=torch.float32).repeat(3, 1)
    history = torch.tensor([[2, 4, 0], [5, 1, 3], [1, 2, 3]])
    lengths = torch.tensor([2, 1, 3])  # row 1 has seen item 5 only; row 2 has no padding at all
    masked = mask_seen(scores, history, lengths)
    assert torch.isinf(masked[0, [0, 2, 4]]).all() and masked[0, [1, 3, 5]].tolist() == [1.0, 3.0, 5.0]
    assert torch.isinf(masked[1, [0, 5]]).all() and masked[1, [1, 2, 3, 4]].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert torch.isinf(masked[2, [0, 1, 2, 3]]).all() and masked[2, [4, 5]].tolist() == [4.0, 5.0]


def test_ranking_metrics_by_hand() -> None:
    ranks = np.array([0, 4, 9, 10, 60])
    metrics = ranking_metrics(ranks, ks=(10, 50))
    assert metrics["hr_10"] == pytest.approx(3 / 5)
    assert metrics["hr_50"] == pytest.approx(4 / 5)
    ndcg_10 = (1 / math.log2(2) + 1 / math.log2(6) + 1 / math.log2(11)) / 5
    assert metrics["ndcg_10"] == pytest.approx(ndcg_10)
    assert metrics["ndcg_50"] == pytest.approx(ndcg_10 + 1 / math.log2(12) / 5)
    assert metrics["mrr"] == pytest.approx((1 + 1 / 5 + 1 / 10 + 1 / 11 + 1 / 61) / 5)
    assert sorted(metrics) == ["hr_10", "hr_50", "mrr", "ndcg_10", "ndcg_50"]


def test_a_rank_that_can_never_hit_counts_zero() -> None:
    metrics = ranking_metrics(np.array([0, np.inf]), ks=(10,))
    assert metrics == {"hr_10": 0.5, "ndcg_10": 0.5, "mrr": 0.5}


def test_metric_keys_for_mlflow() -> None:
    keys = prefixed(ranking_metrics(np.array([3])), "val")
    assert sorted(keys) == sorted(
        ["val_hr_10", "val_hr_50", "val_hr_200", "val_ndcg_10", "val_ndcg_50", "val_ndcg_200", "val_mrr"]
    )


def test_sampled_ranks_use_only_unseen_negatives() -> None:
    # Items 1..9; the target (5) scores 0.5; seen items 8 and 9 score highest but are masked.
    scores = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.95, 0.99]])
    scores = mask_seen(scores, torch.tensor([[8, 9]]), torch.tensor([2]))
    # All 6 allowed negatives (1, 2, 3, 4, 6, 7): exactly 6 and 7 beat the target.
    assert sampled_ranks(scores, torch.tensor([5]), num_negatives=6).item() == 2
    generator = torch.Generator().manual_seed(0)
    ranks = [sampled_ranks(scores, torch.tensor([5]), 3, generator).item() for _ in range(50)]
    assert set(ranks) <= {0, 1, 2} and len(set(ranks)) > 1
    with pytest.raises(ValueError, match="fewer than 7"):
        sampled_ranks(scores, torch.tensor([5]), num_negatives=7)

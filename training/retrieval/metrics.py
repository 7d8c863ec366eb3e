"""Ranking metrics of next-item retrieval: HR@K, NDCG@K and MRR from the target's rank.

A rank is 0-based: the number of candidates placed before the target. Scores equal to the
target's count as before it when their item index is smaller (a deterministic tie-break,
as a stable sort by descending score would give). Items already in the user's history and
the padding index 0 are never candidates under the ``seen_filtered`` protocol (``mask_seen``;
see ``training.retrieval.evaluation``). A rank of inf is a target that can never be hit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def mask_seen(scores: torch.Tensor, item_indices: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``scores`` (B, N+1) with -inf at index 0 and at every item of each row's history."""
    positions = torch.arange(item_indices.shape[1], device=item_indices.device).unsqueeze(0)
    seen = item_indices.masked_fill(positions >= lengths.unsqueeze(1), 0)  # padding -> index 0
    masked = scores.scatter(1, seen, float("-inf"))
    masked[:, 0] = float("-inf")  # also when no position is padding
    return masked


def sampled_ranks(
    scores: torch.Tensor, targets: torch.Tensor, num_negatives: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B,) rank of each target among ``num_negatives`` random candidates that are not the
    target, not padding and not masked (-inf) in ``scores`` (call ``mask_seen`` first)."""
    allowed = torch.isfinite(scores)
    allowed[torch.arange(len(targets)), targets] = False
    count = int(allowed.sum(1).min())
    if count < num_negatives:
        raise ValueError(f"a row has only {count} unseen items, fewer than {num_negatives} sampled negatives")
    negatives = torch.multinomial(allowed.float(), num_negatives, replacement=False, generator=generator)
    target_scores = scores.gather(1, targets.unsqueeze(1))
    negative_scores = scores.gather(1, negatives)
    ahead = (negative_scores > target_scores) | (
        (negative_scores == target_scores) & (negatives < targets.unsqueeze(1))
    )
    return ahead.sum(1)


DEFAULT_KS = (10, 50, 200)


def ranking_metrics(ranks: np.ndarray | torch.Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """{hr_K, ndcg_K for K in ks, mrr} averaged over ``ranks`` (0-based); empty ranks give 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if len(ranks) == 0:
        return {**{f"{name}_{k}": 0.0 for k in ks for name in ("hr", "ndcg")}, "mrr": 0.0}
    metrics: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        metrics[f"hr_{k}"] = float(hit.mean())
        metrics[f"ndcg_{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
    metrics["mrr"] = float((1.0 / (ranks + 1.0)).mean())
    return metrics


def prefixed(metrics: dict[str, float], split: str) -> dict[str, float]:
    """MLflow keys of ``metrics``: ``{split}_hr_10``, ``{split}_mrr``, ... (split = val or test)."""
    return {f"{split}_{name}": value for name, value in metrics.items()}

"""Evaluation of next-item retrieval on a split, under two protocols, from one scoring pass.

Each evaluable row (a target, a non-empty history, not shard padding) gets the 0-based rank
of its target among the catalogue (item index 0, padding, is never a candidate):

* ``seen_filtered``: the items of the row's history are removed first, as the HSTU reference
  evaluates. A target the user had already consumed (a *repeat*) can then never be hit: its
  rank is infinite, so the best achievable HR is 1 - (share of repeated targets).
* ``all_items``: nothing is removed; a repeated target competes like any other item.

Scorers are linear: scores = queries(batch) @ items.T, covered by ``training.retrieval.retriever.Retriever``
(the models) and ``PopularityScorer`` (the baseline), and the catalogue is walked in chunks
with running counts, so memory does not grow with the number of items. With ``sampled`` the
target is ranked against ``negatives`` random candidates instead (of the unseen items, or of
all items), for comparison with papers that report sampled metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from features.examples import SequenceExamples
from ingestion.schema import ACTION_IDS, POSITIVE_ACTIONS
from training.retrieval.metrics import mask_seen, ranking_metrics, sampled_ranks
from training.retrieval.retriever import DEFAULT_CHUNK_ITEMS

PROTOCOLS = ("seen_filtered", "all_items")


class LinearScorer(Protocol):
    """What evaluation needs of a scorer: queries and the item rows they are scored against."""

    num_items: int

    def queries(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def score_chunks(self, queries: torch.Tensor, chunk_items: int = ...) -> Iterator[tuple[int, torch.Tensor]]: ...


@dataclass(frozen=True)
class SplitRanks:
    """Target ranks of the evaluable rows of a split (0-based; inf = can never be hit)."""

    seen_filtered: np.ndarray
    all_items: np.ndarray
    repeated: np.ndarray  # bool: the target is in the row's history

    @staticmethod
    def concatenate(parts: list[SplitRanks]) -> SplitRanks:
        """The ranks of several shards of a split, as one."""
        columns = zip(*((part.seen_filtered, part.all_items, part.repeated) for part in parts), strict=True)
        return SplitRanks(*(np.concatenate(column) for column in columns))


def split_ranks(
    scorer: LinearScorer,
    examples: SequenceExamples,
    *,
    batch_size: int = 256,
    sampled: bool = False,
    negatives: int = 100,
    seed: int = 0,
    chunk_items: int = DEFAULT_CHUNK_ITEMS,
) -> SplitRanks:
    """Ranks of every evaluable row of ``examples`` under both protocols, in row order."""
    generator = torch.Generator().manual_seed(seed)
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for batch in examples.batches(batch_size):
        keep = batch["valid"] & (batch["targets"] > 0) & (batch["lengths"] > 0)
        if not keep.any():
            continue
        batch = {key: value[keep] for key, value in batch.items()}
        repeated = _in_history(batch["item_indices"], batch["lengths"], batch["targets"])
        queries = scorer.queries(batch)
        if sampled:
            seen, everything = _sampled(scorer, queries, batch, negatives, generator, chunk_items)
        else:
            seen, everything = _full(scorer, queries, batch, chunk_items)
        seen[repeated] = float("inf")
        parts.append((seen, everything, repeated))
    if not parts:
        empty = np.zeros(0)
        return SplitRanks(empty, empty, np.zeros(0, dtype=bool))
    return SplitRanks(*(torch.cat(column).numpy() for column in zip(*parts, strict=True)))


def split_metrics(ranks: SplitRanks, ks: tuple[int, ...], split: str) -> dict[str, float]:
    """MLflow metrics of a split: ``{split}_{metric}`` (seen_filtered), ``{split}_all_{metric}``
    (all_items), ``{split}_repeat_target_share`` and ``{split}_seen_filtered_hr_ceiling``."""
    share = float(ranks.repeated.mean()) if len(ranks.repeated) else 0.0
    metrics = {f"{split}_{name}": value for name, value in ranking_metrics(ranks.seen_filtered, ks).items()}
    metrics.update({f"{split}_all_{name}": value for name, value in ranking_metrics(ranks.all_items, ks).items()})
    metrics[f"{split}_repeat_target_share"] = share
    metrics[f"{split}_seen_filtered_hr_ceiling"] = 1.0 - share
    return metrics


def cross_entropy(
    scorer: LinearScorer,
    examples: SequenceExamples,
    logit_scale: float,
    *,
    batch_size: int = 256,
    chunk_items: int = DEFAULT_CHUNK_ITEMS,
) -> float:
    """Mean cross-entropy (nats) of each evaluable row's target under a softmax over the whole
    catalogue of ``scores x logit_scale`` (the training loss's logits:
    ``training.common.scoring.logit_scale``; nothing filtered), the loss a scaling law is fitted
    to. Targets the scorer does not know are left out."""
    total, rows = 0.0, 0
    for batch in examples.batches(batch_size):
        known = batch["targets"] <= scorer.num_items
        keep = batch["valid"] & (batch["targets"] > 0) & (batch["lengths"] > 0) & known
        if not keep.any():
            continue
        batch = {key: value[keep] for key, value in batch.items()}
        queries = scorer.queries(batch)
        targets = batch["targets"].to(queries.device)
        logsumexp = torch.full((len(targets),), float("-inf"), dtype=torch.float64, device=queries.device)
        target_logits = torch.zeros_like(logsumexp)
        for start, scores in scorer.score_chunks(queries, chunk_items):
            logits = scores.double() * logit_scale
            logsumexp = torch.logaddexp(logsumexp, torch.logsumexp(logits, dim=1))
            inside = (targets >= start) & (targets < start + scores.shape[1])
            target_logits[inside] = logits[inside.nonzero().squeeze(1), targets[inside] - start]
        total += float((logsumexp - target_logits).sum())
        rows += len(targets)
    return total / rows if rows else float("nan")


def _in_history(items: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    real = torch.arange(items.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    return ((items == targets.unsqueeze(1)) & real).any(1)


def _full(
    scorer: LinearScorer, queries: torch.Tensor, batch: dict[str, torch.Tensor], chunk_items: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ranks over the whole catalogue: running counts of items placed before the target.

    Two passes over the chunks: the first reads each target's score out of the very product
    the second compares against, so ties and the target itself are judged exactly.

    An item is before the target when it scores higher, or the same with a smaller index (a
    deterministic tie-break, as a stable sort by descending score gives). Targets the scorer
    does not know (newer than its vocabulary) can never be hit.
    """
    targets = batch["targets"].to(queries.device)
    known = targets <= scorer.num_items
    rows = torch.arange(len(targets), device=queries.device)
    target_scores = torch.full((len(targets),), float("-inf"), device=queries.device)
    for start, scores in scorer.score_chunks(queries, chunk_items):
        inside = known & (targets >= start) & (targets < start + scores.shape[1])
        target_scores[inside] = scores[rows[inside], targets[inside] - start]
    history = (
        batch["item_indices"]
        .masked_fill(torch.arange(batch["item_indices"].shape[1]).unsqueeze(0) >= batch["lengths"].unsqueeze(1), 0)
        .to(queries.device)
    )
    before_all = torch.zeros(len(targets), dtype=torch.long, device=queries.device)
    before_unseen = torch.zeros_like(before_all)
    for start, scores in scorer.score_chunks(queries, chunk_items):
        columns = torch.arange(start, start + scores.shape[1], device=queries.device).unsqueeze(0)
        ahead = (scores > target_scores.unsqueeze(1)) | (
            (scores == target_scores.unsqueeze(1)) & (columns < targets.unsqueeze(1))
        )
        ahead &= columns != targets.unsqueeze(1)
        before_all += ahead.sum(1)
        seen = torch.zeros_like(ahead)
        local = history - start
        inside = (local >= 0) & (local < scores.shape[1]) & (history > 0)
        seen[rows.unsqueeze(1).expand_as(local)[inside], local[inside]] = True
        before_unseen += (ahead & ~seen).sum(1)
    unknown = torch.full_like(target_scores, float("inf"))
    return (
        torch.where(known, before_unseen.double(), unknown.double()).cpu(),
        torch.where(known, before_all.double(), unknown.double()).cpu(),
    )


def _sampled(
    scorer: LinearScorer,
    queries: torch.Tensor,
    batch: dict[str, torch.Tensor],
    negatives: int,
    generator: torch.Generator,
    chunk_items: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks among ``negatives`` random candidates: unseen items, or any items."""
    scores = torch.cat([chunk for _, chunk in scorer.score_chunks(queries, chunk_items)], dim=1).float().cpu()
    targets = batch["targets"].clamp(max=scorer.num_items)
    unseen = sampled_ranks(mask_seen(scores, batch["item_indices"], batch["lengths"]), targets, negatives, generator)
    anything = sampled_ranks(scores, targets, negatives, generator)
    unknown = batch["targets"] > scorer.num_items
    return (
        unseen.double().masked_fill(unknown, float("inf")),
        anything.double().masked_fill(unknown, float("inf")),
    )


class PopularityScorer:
    """The popularity baseline: how often each item was a positive event in the train split."""

    def __init__(self, train: SequenceExamples, num_items: int) -> None:
        positive_ids = np.array([ACTION_IDS[action] for action in POSITIVE_ACTIONS])
        real = np.arange(train.max_len)[None, :] < train.lengths[:, None]
        chosen = real & np.isin(train.action_ids, positive_ids) & train.valid_mask[:, None]
        counts = np.bincount(train.item_indices[chosen], minlength=num_items + 1)[: num_items + 1]
        self.counts = torch.from_numpy(counts.astype(np.float32))
        self.num_items = num_items

    def queries(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.ones(len(batch["targets"]), 1)

    def score_chunks(
        self, queries: torch.Tensor, chunk_items: int = DEFAULT_CHUNK_ITEMS
    ) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, self.num_items + 1, chunk_items):
            scores = queries @ self.counts[start : start + chunk_items].unsqueeze(0)
            if start == 0:
                scores[:, 0] = float("-inf")
            yield start, scores

"""Evaluation protocols and exact chunked ranks, with a scorer whose scores are set by hand."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from features.examples import SequenceExamples
from training.retrieval.evaluation import PopularityScorer, split_metrics, split_ranks


class FixedScorer:
    """Every query scores item i with ``item_scores[i]`` (one row per example, in order)."""

    def __init__(self, item_scores: list[list[float]]) -> None:
        self.table = torch.tensor(item_scores)
        self.num_items = self.table.shape[1] - 1
        self.rows = 0

    def queries(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        chosen = torch.arange(self.rows, self.rows + len(batch["targets"]))
        self.rows += len(chosen)
        return torch.nn.functional.one_hot(chosen, len(self.table)).float()

    def score_chunks(self, queries: torch.Tensor, chunk_items: int = 2) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, self.num_items + 1, chunk_items):
            scores = queries @ self.table[:, start : start + chunk_items]
            if start == 0:
                scores[:, 0] = float("-inf")
            yield start, scores


def _examples(histories: list[list[int]], targets: list[int], num_items: int) -> SequenceExamples:
    width = max(len(h) for h in histories)
    items = np.array([h + [0] * (width - len(h)) for h in histories])
    actions = np.where(items > 0, 2, 0)
    return SequenceExamples(
        user_ids=np.array([f"u{i}" for i in range(len(histories))]),
        item_indices=items,
        action_ids=actions,
        timestamps=np.where(items > 0, 1_000, 0),
        lengths=np.array([len(h) for h in histories]),
        targets=np.array(targets),
        num_items=num_items,
    )


def test_a_repeated_target_is_a_hit_under_all_items_and_a_miss_under_seen_filtered() -> None:
    # Row 0 saw item 3 and its target is 3 again (the best-scored item); row 1's target 4 is new.
    examples = _examples([[3, 1], [2]], targets=[3, 4], num_items=5)
    scores = [[0.0, 0.2, 0.1, 0.9, 0.3, 0.05], [0.0, 0.1, 0.8, 0.2, 0.7, 0.0]]
    ranks = split_ranks(FixedScorer(scores), examples, chunk_items=2)
    assert ranks.all_items.tolist() == [0, 1]  # row 1: only item 2 (0.8) beats the target (0.7)
    assert ranks.seen_filtered.tolist() == [np.inf, 0]  # row 1: the seen item 2 is removed
    assert ranks.repeated.tolist() == [True, False]
    metrics = split_metrics(ranks, (10,), "test")
    assert metrics["test_hr_10"] == 0.5 and metrics["test_all_hr_10"] == 1.0
    assert metrics["test_repeat_target_share"] == 0.5 and metrics["test_seen_filtered_hr_ceiling"] == 0.5


@pytest.mark.parametrize("chunk_items", [1, 2, 3, 100])
def test_chunked_ranks_are_exact_and_ties_break_by_index(chunk_items: int) -> None:
    examples = _examples([[5], [5], [5]], targets=[3, 2, 4], num_items=4)
    scores = [
        [0.0, 0.9, 0.1, 0.5, 0.3, 0.0],  # target 3 (0.5): only item 1 is higher -> rank 1
        [0.0, 0.2, 0.2, 0.2, 0.1, 0.0],  # target 2 ties with 1 (smaller index: ahead) and 3 (behind) -> 1
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.0],  # target 4 is the best -> 0
    ]
    ranks = split_ranks(FixedScorer(scores), examples, chunk_items=chunk_items)
    assert ranks.all_items.tolist() == [1, 1, 0]


def test_a_target_newer_than_the_model_can_never_be_hit() -> None:
    examples = _examples([[1]], targets=[6], num_items=6)  # the scorer knows items 1..5 only
    ranks = split_ranks(FixedScorer([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5]]), examples)
    assert ranks.all_items.tolist() == [np.inf] and ranks.seen_filtered.tolist() == [np.inf]


def test_sampled_protocols_draw_from_unseen_or_all_items() -> None:
    examples = _examples([[9, 8]], targets=[5], num_items=11)
    scores = [[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.95, 0.99, 0.05, 0.06]]
    ranks = split_ranks(FixedScorer(scores), examples, sampled=True, negatives=8)
    # The 8 unseen candidates (1-4, 6, 7, 10, 11) are all drawn: only 6 and 7 beat the target.
    assert ranks.seen_filtered.tolist() == [2]
    # 8 of the 10 other items: 6, 7 and the seen 8, 9 may be among them.
    assert 2 <= ranks.all_items[0] <= 4


def test_popularity_counts_positive_train_events() -> None:
    train = _examples([[1, 2, 2], [2, 3]], targets=[0, 0], num_items=4)
    scorer = PopularityScorer(train, num_items=4)
    assert scorer.counts.tolist() == [0, 1, 3, 1, 0]
    ranks = split_ranks(scorer, _examples([[1]], targets=[2], num_items=4))
    assert ranks.all_items.tolist() == [0]

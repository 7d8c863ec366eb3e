"""The retrieval loss on hand-made embeddings: which positions count, and the exact values."""

from __future__ import annotations

import math

import pytest
import torch

from ingestion.schema import ACTION_IDS
from training.common.loss import retrieval_loss

TEMPERATURE = 0.5


def _batch(actions: list[str], valid: bool = True) -> dict[str, torch.Tensor]:
    return {
        "item_indices": torch.tensor([[1, 2, 3, 4]]),
        "action_ids": torch.tensor([[ACTION_IDS[action] for action in actions]]),
        "lengths": torch.tensor([4]),
        "valid": torch.tensor([valid]),
    }


def _unit(angle: float) -> list[float]:
    return [math.cos(angle), math.sin(angle)]


# Hidden state of every position points along x; item k's embedding lies at angle 0.3 * k.
HIDDEN = torch.tensor([[_unit(0.0)] * 4])
HISTORY_EMB = torch.tensor([[_unit(0.3 * item) for item in (1, 2, 3, 4)]])
NEGATIVE_IDS = torch.tensor([4, 7])  # 4 is position 2's own next item: masked for that position
NEGATIVE_EMB = torch.tensor([_unit(0.3 * 4), _unit(0.3 * 7)])


def _loss(actions: list[str], ntr_weight: float = 1.0, valid: bool = True):  # noqa: ANN202
    return retrieval_loss(
        HIDDEN,
        HISTORY_EMB,
        _batch(actions, valid),
        NEGATIVE_IDS,
        NEGATIVE_EMB,
        temperature=TEMPERATURE,
        in_batch_negatives=0,
        ntr_weight=ntr_weight,
    )


def _logit(item: int) -> float:
    return math.cos(0.3 * item) / TEMPERATURE


def test_positive_next_items_get_the_sampled_softmax_by_hand() -> None:
    # Next events: 2 (click), 3 (impression: no term), 4 (purchase).
    terms = _loss(["view", "click", "impression", "purchase"])
    assert (terms.positives, terms.negatives) == (2, 0)
    first = -_logit(2) + math.log(math.exp(_logit(2)) + math.exp(_logit(4)) + math.exp(_logit(7)))
    third = -_logit(4) + math.log(math.exp(_logit(4)) + math.exp(_logit(7)))  # candidate 4 = target: masked
    assert terms.softmax.item() == pytest.approx((first + third) / 2, rel=1e-5)
    assert terms.total.item() == pytest.approx(terms.softmax.item(), rel=1e-6)


def test_skipped_or_disliked_next_items_get_the_not_to_recommend_term() -> None:
    # Next events: 2 (click), 3 (skip), 4 (dislike).
    terms = _loss(["view", "click", "skip", "dislike"], ntr_weight=0.5)
    assert (terms.positives, terms.negatives) == (1, 2)

    def unlikely(item: int, candidates: list[int]) -> float:
        p = math.exp(_logit(item)) / (math.exp(_logit(item)) + sum(math.exp(_logit(c)) for c in candidates))
        return -math.log(1 - p)

    expected_ntr = (unlikely(3, [4, 7]) + unlikely(4, [7])) / 2
    assert terms.not_to_recommend.item() == pytest.approx(expected_ntr, rel=1e-5)
    assert terms.total.item() == pytest.approx(terms.softmax.item() + 0.5 * expected_ntr, rel=1e-5)


def test_ntr_weight_zero_disables_negative_feedback() -> None:
    terms = _loss(["view", "click", "skip", "dislike"], ntr_weight=0.0)
    assert terms.negatives == 0 and terms.not_to_recommend.item() == 0.0


def test_padding_rows_of_a_shard_contribute_nothing_but_keep_the_graph() -> None:
    hidden = HIDDEN.clone().requires_grad_(True)
    terms = retrieval_loss(
        hidden, HISTORY_EMB, _batch(["view", "click", "skip", "like"], valid=False), NEGATIVE_IDS, NEGATIVE_EMB,
        temperature=TEMPERATURE, in_batch_negatives=4, ntr_weight=1.0,
    )  # fmt: skip
    assert (terms.positives, terms.negatives, terms.total.item()) == (0, 0, 0.0)
    terms.total.backward()  # DDP needs every rank's loss connected to the parameters
    assert hidden.grad is not None and not hidden.grad.any()


def test_a_better_ranked_positive_lowers_the_loss() -> None:
    closer = HISTORY_EMB.clone()
    closer[0, 1] = torch.tensor(_unit(0.01))  # position 0's next item now almost matches the query
    base = _loss(["view", "click", "impression", "impression"])
    improved = retrieval_loss(
        HIDDEN, closer, _batch(["view", "click", "impression", "impression"]), NEGATIVE_IDS, NEGATIVE_EMB,
        temperature=TEMPERATURE, in_batch_negatives=0, ntr_weight=1.0,
    )  # fmt: skip
    assert improved.total.item() < base.total.item()

"""The selectable losses (full softmax in chunks, logQ-corrected sampled softmax), their memory
check, and the run settings of issue 24: loss by catalogue size, learning-rate schedule,
patience that grows with the run, the fixed validation sample."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from features.examples import SequenceExamples
from ingestion.schema import ACTION_IDS
from training.common.loss import check_full_loss_fits, chunked_logsumexp, retrieval_loss
from training.common.worker_loop import Progress
from training.retrieval.config import TrainConfig
from training.retrieval.worker import validation_sample

TEMPERATURE = 0.5


def _batch(actions: list[str], items: list[int]) -> dict[str, torch.Tensor]:
    return {
        "item_indices": torch.tensor([items]),
        "action_ids": torch.tensor([[ACTION_IDS[action] for action in actions]]),
        "lengths": torch.tensor([len(items)]),
        "valid": torch.tensor([True]),
    }


def test_chunked_logsumexp_is_exact_in_value_and_gradient() -> None:
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(7, 5, generator=generator, requires_grad=True)
    items = torch.randn(23, 5, generator=generator, requires_grad=True)
    weights = torch.rand(7, generator=generator)
    chunked = chunked_logsumexp(queries, items, chunk_items=4)  # 23 items in chunks of 4 (the last one short)
    (chunked * weights).sum().backward()
    grads = queries.grad.clone(), items.grad.clone()
    queries.grad, items.grad = None, None
    whole = torch.logsumexp(queries @ items.T, dim=1)
    (whole * weights).sum().backward()
    assert torch.allclose(chunked, whole, atol=1e-5)
    assert torch.allclose(grads[0], queries.grad, atol=1e-5) and torch.allclose(grads[1], items.grad, atol=1e-5)


def test_full_loss_is_cross_entropy_over_the_catalogue_with_its_not_to_recommend_term() -> None:
    generator = torch.Generator().manual_seed(1)
    num_items, dim = 9, 4
    table = torch.randn(num_items + 1, dim, generator=generator)
    hidden = torch.randn(1, 4, dim, generator=generator)
    items = [3, 5, 2, 8]  # next events: 5 (click), 2 (skip), 8 (view)
    batch = _batch(["view", "click", "skip", "view"], items)
    catalogue = torch.arange(1, num_items + 1)
    terms = retrieval_loss(
        hidden, table[items].unsqueeze(0), batch, catalogue, table[catalogue], temperature=TEMPERATURE,
        in_batch_negatives=0, ntr_weight=0.5, kind="full", chunk_items=2,
    )  # fmt: skip
    logits = F.normalize(hidden[0, :-1], dim=-1) @ F.normalize(table[1:], dim=-1).T / TEMPERATURE
    targets = torch.tensor(items[1:]) - 1
    cross_entropy = F.cross_entropy(logits[[0, 2]], targets[[0, 2]])
    p_skipped = torch.softmax(logits[1], dim=0)[targets[1]]
    assert (terms.positives, terms.negatives) == (2, 1)
    assert terms.softmax.item() == pytest.approx(cross_entropy.item(), rel=1e-5)
    assert terms.not_to_recommend.item() == pytest.approx(-math.log(1 - p_skipped.item()), rel=1e-5)
    assert terms.total.item() == pytest.approx(cross_entropy.item() - 0.5 * math.log(1 - p_skipped.item()), rel=1e-5)


def _unit(angle: float) -> list[float]:
    return [math.cos(angle), math.sin(angle)]


def _logit(item: int) -> float:
    return math.cos(0.3 * item) / TEMPERATURE


def test_logq_subtracts_the_log_of_each_candidates_expected_count() -> None:
    # One position (next item 2, a click) against uniform candidates 4 and 7 of a 10-item
    # catalogue plus 3 in-batch draws from the batch's positive targets (only item 2 here,
    # the position's own target: masked, but it still counts in the expected number).
    hidden = torch.tensor([[_unit(0.0)] * 2])
    history = torch.tensor([[_unit(0.3), _unit(0.6)]])
    batch = _batch(["view", "click"], [1, 2])
    negatives = torch.tensor([4, 7])
    negative_emb = torch.tensor([_unit(1.2), _unit(2.1)])
    options = {"temperature": TEMPERATURE, "in_batch_negatives": 3, "ntr_weight": 0.0, "num_items": 10}
    plain = retrieval_loss(hidden, history, batch, negatives, negative_emb, kind="sampled", **options)
    logq = retrieval_loss(hidden, history, batch, negatives, negative_emb, kind="sampled_logq", **options)
    uniform = 2 / 10  # expected count of items 4 and 7: 2 uniform draws of 10 items, never in the batch
    by_hand = -_logit(2) + math.log(
        math.exp(_logit(2)) + (math.exp(_logit(4)) + math.exp(_logit(7))) / uniform
    )  # fmt: skip
    assert logq.softmax.item() == pytest.approx(by_hand, rel=1e-5)
    assert plain.softmax.item() == pytest.approx(
        -_logit(2) + math.log(math.exp(_logit(2)) + math.exp(_logit(4)) + math.exp(_logit(7))), rel=1e-5
    )


def test_logq_needs_the_catalogue_size() -> None:
    with pytest.raises(ValueError, match="num_items"):
        retrieval_loss(
            torch.zeros(1, 2, 2), torch.ones(1, 2, 2), _batch(["view", "click"], [1, 2]), torch.tensor([3]),
            torch.ones(1, 2), temperature=1.0, in_batch_negatives=0, ntr_weight=0.0, kind="sampled_logq",
        )  # fmt: skip


def test_a_full_loss_that_cannot_fit_says_so_and_names_the_setting() -> None:
    check_full_loss_fits(128 * 200, 1_000, 52, 8192, available=8 * 2**30)  # wikipedia-sized: fits
    with pytest.raises(MemoryError, match="--loss-chunk-items"):
        check_full_loss_fits(128 * 200, 1_000_000, 52, 8192, available=4 * 2**30)  # the scores are too big
    check_full_loss_fits(128 * 200, 1_000_000, 52, 1024, available=4 * 2**30)  # smaller chunks fit
    with pytest.raises(MemoryError, match="sampled_logq"):
        check_full_loss_fits(128 * 200, 100_000_000, 52, 16, available=4 * 2**30)  # the rows alone do not


def test_auto_loss_depends_on_the_catalogue_size() -> None:
    config = TrainConfig(full_loss_max_items=1_000)
    assert config.resolved_loss(1_000) == "full" and config.resolved_loss(1_001) == "sampled_logq"
    assert TrainConfig().resolved_loss(2_000) == "full" and TrainConfig().resolved_loss(5_000) == "sampled_logq"
    assert TrainConfig(loss="sampled").resolved_loss(10) == "sampled"
    assert config.loss_options(500)["kind"] == "full"


def test_learning_rate_schedules() -> None:
    constant = TrainConfig(epochs=10)
    assert [constant.lr_factor(step, 5) for step in (0, 25, 49)] == [1.0, 1.0, 1.0]
    warm = TrainConfig(epochs=10, warmup_epochs=1, lr_schedule="linear")
    assert warm.lr_factor(0, 5) == pytest.approx(0.2) and warm.lr_factor(4, 5) == pytest.approx(1.0)
    assert warm.lr_factor(5, 5) == pytest.approx(1.0) and warm.lr_factor(50, 5) == pytest.approx(0.0)
    assert warm.lr_factor(27, 5) == pytest.approx(1 - 22 / 45)
    cosine = TrainConfig(epochs=4, lr_schedule="cosine")
    assert cosine.lr_factor(0, 10) == pytest.approx(1.0) and cosine.lr_factor(20, 10) == pytest.approx(0.5)
    assert cosine.lr_factor(40, 10) == pytest.approx(0.0)


def test_patience_grows_with_the_best_epoch() -> None:
    progress = Progress()
    for epoch in range(1, 41):  # improves until epoch 40
        progress.record(epoch, {"val_ndcg_10": epoch}, "val_ndcg_10")
    for epoch in range(41, 50):  # then 9 epochs without a better value
        progress.record(epoch, {"val_ndcg_10": 0.0}, "val_ndcg_10")
    assert progress.exhausted(5) and not progress.exhausted(5, 0.25)  # 0.25 x 40 = 10 epochs
    progress.record(50, {"val_ndcg_10": 0.0}, "val_ndcg_10")
    assert progress.exhausted(5, 0.25) and not progress.exhausted(0, 0.25)  # patience 0: never


def _examples(rows: int) -> SequenceExamples:
    lengths = np.full(rows, 3)
    return SequenceExamples(
        user_ids=np.array([f"u{row}" for row in range(rows)]),
        item_indices=np.tile(np.arange(1, 4), (rows, 1)) + np.arange(rows)[:, None],
        action_ids=np.full((rows, 3), ACTION_IDS["view"]),
        timestamps=np.zeros((rows, 3), dtype=np.int64),
        lengths=lengths,
        targets=np.arange(rows) + 10,
        num_items=rows + 20,
    )


def test_the_validation_sample_is_fixed_and_drawn_once() -> None:
    val = _examples(50)
    sample = validation_sample(val, 20, seed=3)
    assert len(sample) == 20 and len(set(sample.targets.tolist())) == 20
    assert np.array_equal(sample.targets, validation_sample(val, 20, seed=3).targets)  # the same every epoch
    assert not np.array_equal(sample.targets, validation_sample(val, 20, seed=4).targets)
    assert validation_sample(val, 0, seed=3) is val and validation_sample(val, 50, seed=3) is val

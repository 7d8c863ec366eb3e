"""The rankers without Ray: one history encoded once for many candidates, the exported model
(no TorchRec), sharded <-> plain weights, warm start from retrieval, the next-item targets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ingestion.schema import ACTION_IDS
from training.common.config import EncoderConfig
from training.common.sharded_table import lookup_input, plain_weights
from training.ranking.config import RankerConfig, RankingTrainConfig
from training.ranking.io import RankingInfo, RankingScorer, save_ranking_model
from training.ranking.model import RankingModel, ranking_loss
from training.ranking.sharded_model import ShardedRankingModel
from training.ranking.worker import next_item_targets, warm_start_weights
from training.retrieval.io import ModelInfo
from training.retrieval.model import RetrievalModel

ENCODER = EncoderConfig(kind="hstu", dim=8, num_blocks=2, max_len=12, dropout=0.0)
NUM_ITEMS = 30
HISTORY = [(3, "impression", 1_000), (3, "click", 3_000), (7, "skip", 9_000), (11, "like", 60_000), (4, "view", 61_000)]


def _model(kind: str = "ranker", seed: int = 0) -> RankingModel:
    torch.manual_seed(seed)
    model = RankingModel(RankerConfig(kind=kind, encoder=ENCODER, dropout=0.0), NUM_ITEMS)
    with torch.no_grad():  # untrained heads are near constant; make the output depend on everything
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    return model.eval()


def _batch(history: list[tuple[int, str, int]], candidates: list[int], ts: int, width: int) -> dict[str, torch.Tensor]:
    rows = len(candidates)
    items, actions, stamps = (torch.zeros((rows, width), dtype=torch.long) for _ in range(3))
    for column, (item, action, stamp) in enumerate(history):
        items[:, column], actions[:, column], stamps[:, column] = item, ACTION_IDS[action], stamp
    return {
        "item_indices": items,
        "action_ids": actions,
        "timestamps": stamps,
        "lengths": torch.full((rows,), len(history)),
        "candidates": torch.tensor(candidates),
        "ts": torch.full((rows,), ts),
        "labels": torch.zeros((rows, 5)),
        "valid": torch.ones(rows, dtype=torch.bool),
    }


@pytest.mark.parametrize("kind", ["ranker", "dlrm"])
def test_one_history_is_encoded_once_for_all_candidates(kind: str) -> None:
    scorer = RankingScorer(_model(kind))
    calls: list[int] = []
    original = scorer.model.tower.encode

    def counting(*args: torch.Tensor) -> object:
        calls.append(args[0].shape[0])
        return original(*args)

    scorer.model.tower.encode = counting  # type: ignore[method-assign]
    candidates = list(range(1, NUM_ITEMS + 1)) * 3
    scores = scorer.score(HISTORY, candidates, ts=62_000)
    assert calls == [1] and scores.shape == (len(candidates), 5)
    assert ((scores > 0) & (scores < 1)).all()
    # The same as scoring every (history, candidate) row on its own, padding included.
    calls.clear()
    rowwise = scorer.score_batch(_batch(HISTORY, candidates, 62_000, width=ENCODER.max_len)).numpy()
    np.testing.assert_allclose(scores, rowwise, rtol=1e-5, atol=1e-6)
    assert np.ptp(scores[:, 0]) > 1e-3  # candidates are told apart


def test_the_ranker_is_target_aware_and_reads_order_and_time_the_dlrm_does_not() -> None:
    ranker, dlrm = RankingScorer(_model("ranker")), RankingScorer(_model("dlrm"))
    shuffled = [HISTORY[i] for i in (2, 0, 4, 1, 3)]
    shuffled = [(item, action, stamp) for (item, action, _), (_, _, stamp) in zip(shuffled, HISTORY, strict=True)]
    for scorer, order_matters in ((ranker, True), (dlrm, False)):
        a, b = scorer.score(HISTORY, [7, 9], ts=62_000), scorer.score(shuffled, [7, 9], ts=62_000)
        assert (not np.allclose(a, b, atol=1e-6)) == order_matters
    # The ranker sees when the candidate is in the history and what the user did with it.
    skipped = ranker.score(HISTORY, [7], ts=62_000)
    clicked = ranker.score([*HISTORY[:2], (7, "click", 9_000), *HISTORY[3:]], [7], ts=62_000)
    assert not np.allclose(skipped, clicked, atol=1e-6)
    assert not np.allclose(ranker.score(HISTORY, [7], 62_000), ranker.score(HISTORY, [7], 10_000_000), atol=1e-6)


def test_empty_history_and_unknown_items_score() -> None:
    scorer = RankingScorer(_model())
    empty = scorer.score([], [1, 2], ts=5)
    assert empty.shape == (2, 5) and np.isfinite(empty).all()
    unknown = scorer.score([(NUM_ITEMS + 5, "click", 1)], [NUM_ITEMS + 9], ts=5)  # newer than the model
    assert np.allclose(unknown, scorer.score([(0, "click", 1)], [0], ts=5))


def test_export_loads_without_torchrec(tmp_path: Path) -> None:
    model = _model()
    info = RankingInfo(model.config, NUM_ITEMS, {"features/item_vocab": 3, "features/ranking_examples": 4}, 3_600_000)
    save_ranking_model(tmp_path / "model", info, model.state_dict())
    expected = RankingScorer(model).score(HISTORY, [5, 6, 7], ts=62_000)
    np.save(tmp_path / "expected.npy", expected)
    script = f"""
import sys, numpy as np
from training.ranking.io import RankingScorer
scorer = RankingScorer.from_directory({str(tmp_path / "model")!r})
got = scorer.score({HISTORY!r}, [5, 6, 7], ts=62_000)
assert np.allclose(got, np.load({str(tmp_path / "expected.npy")!r}), atol=1e-6), got
assert scorer.tasks == ("click", "like", "purchase", "skip", "dislike") and scorer.info.window_ms == 3_600_000
assert not any(name.startswith(("torchrec", "fbgemm")) for name in sys.modules), "torchrec imported"
"""
    subprocess.run([sys.executable, "-c", script], check=True)


def test_sharded_twin_has_the_plain_weights_and_the_same_logits() -> None:
    torch.manual_seed(1)
    config = RankerConfig(kind="ranker", encoder=ENCODER, dropout=0.0)
    sharded = ShardedRankingModel(config, NUM_ITEMS).eval()
    plain = RankingModel(config, NUM_ITEMS).eval()
    plain.load_state_dict(plain_weights(sharded.state_dict(), ENCODER.dim))  # every key, exact shapes
    batch = _batch(HISTORY, [7, 9, 13], 62_000, width=len(HISTORY))
    lookups = lookup_input(batch["item_indices"], batch["lengths"], batch["candidates"])
    with torch.no_grad():
        logits, hidden, _, extra = sharded(
            lookups, batch["item_indices"], batch["candidates"], batch["action_ids"], batch["timestamps"],
            batch["lengths"], batch["ts"],
        )  # fmt: skip
        torch.testing.assert_close(logits, plain(batch), rtol=1e-5, atol=1e-6)
    assert hidden.shape == (3, len(HISTORY), ENCODER.dim) and extra.shape == (0, ENCODER.dim)


def test_warm_start_takes_the_retrieval_table_and_hstu() -> None:
    retrieval = RetrievalModel(ENCODER, NUM_ITEMS - 4)  # an older, smaller vocabulary
    weights = retrieval.state_dict()
    info = ModelInfo(encoder=ENCODER, num_items=NUM_ITEMS - 4)
    ranker = warm_start_weights(info, weights, RankingTrainConfig(model=RankerConfig(encoder=ENCODER)), NUM_ITEMS)
    sharded_keys = set(ShardedRankingModel(RankerConfig(encoder=ENCODER), NUM_ITEMS).state_dict())
    assert set(ranker) <= sharded_keys and any(key.startswith("tower.encoder.blocks") for key in ranker)
    assert ranker["item_table.embeddings.item.weight"].shape == (NUM_ITEMS - 3, 8)
    dlrm = warm_start_weights(info, weights, RankingTrainConfig(model=RankerConfig(kind="dlrm", encoder=ENCODER)), 30)
    assert set(dlrm) == {"item_table.embeddings.item.weight"}
    other = RankingTrainConfig(model=RankerConfig(encoder=ENCODER.model_copy(update={"num_blocks": 1})))
    with pytest.raises(ValueError, match="encoder"):
        warm_start_weights(info, weights, other, NUM_ITEMS)


def test_next_item_targets_skip_the_same_item_and_losses_weigh_tasks() -> None:
    batch = _batch(HISTORY, [1], 62_000, width=6)
    actions = next_item_targets(batch)["action_ids"][0].tolist()
    # items 3, 3, 7, 11, 4, padding: the click of item 3 right after its impression is no target.
    assert actions == [ACTION_IDS[a] for a in ("click", "impression", "click", "click", "click", "click")]
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    valid = torch.tensor([True, False])
    expected = 1.0 * torch.nn.functional.softplus(torch.tensor(-2.0)) + 3.0 * torch.nn.functional.softplus(
        torch.tensor(-1.0)
    )
    torch.testing.assert_close(ranking_loss(logits, labels, torch.tensor([1.0, 3.0]), valid), expected)

"""Scoring (``EncoderConfig.scoring``): cosine similarity / temperature or the plain dot product, the
same in the loss, the Retriever (evaluation), the exported model and serving's index."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from infra.settings import Settings
from ingestion.schema import ACTION_IDS
from serving import catalog as catalog_module
from serving.catalog import load_catalog
from serving.index import prefix_rows
from training.common.config import EncoderConfig, Scoring
from training.common.loss import retrieval_loss
from training.retrieval.config import TrainConfig
from training.retrieval.io import METADATA_FILE, ModelInfo, read_info, save_model
from training.retrieval.model import RetrievalModel
from training.retrieval.retriever import Retriever

ITEMS, DIM = 40, 8


def _loss_batch(generator: torch.Generator) -> dict[str, torch.Tensor]:
    items = torch.randint(1, ITEMS + 1, (3, 6), generator=generator)
    return {
        "item_indices": items,
        "action_ids": torch.full((3, 6), ACTION_IDS["click"]),
        "lengths": torch.tensor([6, 4, 2]),
        "valid": torch.ones(3, dtype=torch.bool),
    }


def _full_loss(hidden: torch.Tensor, table: torch.Tensor, scoring: Scoring, temperature: float) -> float:
    generator = torch.Generator().manual_seed(0)
    batch = _loss_batch(generator)
    catalogue = torch.arange(1, ITEMS + 1)
    terms = retrieval_loss(
        hidden, table[batch["item_indices"]], batch, catalogue, table[catalogue], temperature=temperature,
        in_batch_negatives=0, ntr_weight=0.0, kind="full", num_items=ITEMS, chunk_items=7, scoring=scoring,
    )  # fmt: skip
    return terms.softmax.item()


def _hidden_and_table() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, 6, DIM, generator=generator), torch.randn(ITEMS + 1, DIM, generator=generator)


def test_dot_scoring_trains_on_raw_dot_products_without_temperature() -> None:
    hidden, table = _hidden_and_table()
    batch = _loss_batch(torch.Generator().manual_seed(0))
    lengths, items = batch["lengths"], batch["item_indices"]
    queries = torch.cat([hidden[row, : int(lengths[row]) - 1] for row in range(3)])
    targets = torch.cat([items[row, 1 : int(lengths[row])] for row in range(3)]) - 1
    by_hand = F.cross_entropy(queries @ table[1:].T, targets).item()
    assert _full_loss(hidden, table, "dot", 0.05) == pytest.approx(by_hand, rel=1e-5)
    assert _full_loss(hidden, table, "dot", 1.0) == pytest.approx(by_hand, rel=1e-5)  # no temperature
    cosine = F.normalize(queries, dim=-1) @ F.normalize(table[1:], dim=-1).T / 0.05
    assert _full_loss(hidden, table, "cosine", 0.05) == pytest.approx(F.cross_entropy(cosine, targets).item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["sampled", "sampled_logq"])
def test_the_norms_matter_to_dot_scoring_only(kind: str) -> None:
    """Cosine scores ignore the rows' lengths; dot scores do not, in the sampled losses too."""
    hidden, table = _hidden_and_table()
    batch = _loss_batch(torch.Generator().manual_seed(0))
    negatives = torch.tensor([3, 9, 17, 30])

    def loss(scale: float, scoring: Scoring) -> float:
        terms = retrieval_loss(
            hidden * scale, table[batch["item_indices"]], batch, negatives, table[negatives], temperature=0.05,
            in_batch_negatives=4, ntr_weight=0.0, kind=kind, num_items=ITEMS, scoring=scoring,
            generator=torch.Generator().manual_seed(2),
        )  # fmt: skip
        return terms.softmax.item()

    assert loss(3.0, "cosine") == pytest.approx(loss(1.0, "cosine"), rel=1e-5)
    assert loss(3.0, "dot") != pytest.approx(loss(1.0, "dot"), rel=1e-3)


def test_the_train_config_hands_the_encoders_scoring_to_the_loss() -> None:
    assert TrainConfig().loss_options(100)["scoring"] == "cosine"
    config = TrainConfig(encoder=EncoderConfig(kind="sasrec", scoring="dot"))
    assert config.loss_options(100)["scoring"] == "dot"


def _model(scoring: Scoring) -> RetrievalModel:
    torch.manual_seed(0)
    config = EncoderConfig(kind="sasrec", dim=DIM, max_len=10, dropout=0.0, ffn_dim=DIM, scoring=scoring)
    model = RetrievalModel(config, ITEMS).eval()
    with torch.no_grad():  # rows of very different lengths, so dot and cosine rank differently
        model.item_embedding.weight.mul_(torch.linspace(0.1, 10.0, ITEMS + 1).unsqueeze(1))
    return model


def _retriever(scoring: Scoring) -> Retriever:
    model = _model(scoring)
    return Retriever(model.encoder, model.item_embedding.weight, ModelInfo(model.config, ITEMS))


def _batch(histories: list[list[int]]) -> dict[str, torch.Tensor]:
    width = max(len(history) for history in histories)
    items = torch.tensor([history + [0] * (width - len(history)) for history in histories])
    return {
        "item_indices": items,
        "action_ids": (items > 0).long() * ACTION_IDS["click"],
        "timestamps": torch.arange(width).repeat(len(histories), 1) * 60_000,
        "lengths": torch.tensor([len(history) for history in histories]),
    }


HISTORIES = [[1, 2, 3], [7], [10, 11, 12, 13], [40, 2, 5, 5, 9]]


def test_a_dot_scoring_retriever_ranks_by_the_raw_dot_product() -> None:
    dot, cosine = _retriever("dot"), _retriever("cosine")
    batch = _batch(HISTORIES)
    queries = dot.queries(batch)
    assert not torch.allclose(queries.norm(dim=-1), torch.ones(len(HISTORIES)))  # raw hidden states
    assert torch.allclose(F.normalize(queries, dim=-1), cosine.queries(batch), atol=1e-6)  # same encoder
    scores, items = dot.top_k(batch, 10)
    raw = queries @ dot.item_rows[1:].float().T
    expected_scores, expected_items = raw.topk(10, dim=1)
    assert torch.equal(items, expected_items + 1) and torch.allclose(scores, expected_scores)
    assert not torch.equal(items, cosine.top_k(batch, 10)[1])  # the lengths of the rows change the order


@pytest.mark.parametrize("scoring", ["cosine", "dot"])
def test_the_exported_model_records_its_scoring_and_its_vectors_are_what_is_scored(
    tmp_path: Path, scoring: Scoring
) -> None:
    model, retriever = _model(scoring), _retriever(scoring)
    directory = save_model(tmp_path / "model", ModelInfo(model.config, ITEMS), model.state_dict())
    assert read_info(directory).encoder.scoring == scoring
    loaded = Retriever.from_directory(directory)
    assert loaded.scoring == scoring
    batch = _batch(HISTORIES)
    assert torch.equal(loaded.top_k(batch, 5)[1], retriever.top_k(batch, 5)[1])
    table = pq.read_table(directory / "item_embeddings.parquet")
    exported = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    assert np.allclose(exported, retriever.item_vectors[1:].numpy(), atol=1e-6)
    unit = np.allclose(np.linalg.norm(exported, axis=1), 1.0, atol=1e-5)
    assert unit == (scoring == "cosine")


def test_a_model_exported_before_scoring_existed_scores_by_cosine(tmp_path: Path) -> None:
    model = _model("cosine")
    directory = save_model(tmp_path / "model", ModelInfo(model.config, ITEMS), model.state_dict())
    metadata = json.loads((directory / METADATA_FILE).read_text())
    del metadata["encoder"]["scoring"]
    (directory / METADATA_FILE).write_text(json.dumps(metadata))
    assert Retriever.from_directory(directory).scoring == "cosine"


@pytest.mark.parametrize("scoring", ["cosine", "dot"])
def test_serving_answers_with_the_scores_evaluation_ranks_by(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scoring: Scoring
) -> None:
    """A catalog as a replica loads it: its inner-product index over the retriever's vectors finds
    the items and scores of the Retriever's top-k (what evaluation ranks by), for either scoring."""
    retriever = _retriever(scoring)
    item_ids = np.array(["", *(f"item-{n}" for n in range(1, ITEMS + 1))], dtype=object)
    monkeypatch.setattr(catalog_module, "load_registered", lambda *args: retriever)
    monkeypatch.setattr(catalog_module, "read_item_ids", lambda *args: item_ids)
    monkeypatch.setattr(catalog_module, "read_popularity", lambda *args: (np.arange(1, ITEMS + 1), np.zeros(ITEMS)))
    version = SimpleNamespace(run_id="run")
    client = SimpleNamespace(get_model_version=lambda *args: version)
    monkeypatch.setattr(catalog_module.tracking, "client", lambda settings: client)
    catalog = load_catalog(Settings(home=tmp_path), "1", exact_max_items=1_000, hnsw_m=8, ef_search=64)
    histories = [[(item, "click", 60_000 * n) for n, item in enumerate(history)] for history in HISTORIES]
    queries = catalog.encode(histories)
    found = catalog.search(queries, 5, [set() for _ in HISTORIES])
    scores, items = retriever.top_k(_batch(HISTORIES), 5)
    assert [[item for item, _ in row] for row in found] == items.tolist()
    assert np.allclose([[score for _, score in row] for row in found], scores.numpy(), atol=1e-4)


def test_a_dot_scoring_prefix_index_holds_the_raw_prefixes() -> None:
    rows = np.array([[3.0, 4.0, 100.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    assert np.array_equal(prefix_rows(rows, 2, "dot"), rows[:, :2])
    assert np.allclose(prefix_rows(rows, 2, "cosine"), [[0.6, 0.8], [0.0, 0.0]])

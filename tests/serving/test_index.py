"""Two-stage retrieval (serving/index.py, Catalog.search with a prefix): which prefix a model is
served with, refusals at load that leave the previous version serving, and searches that rescore
the prefix index's candidates at the full width. No services: catalogs of tiny synthetic models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from infra.settings import Settings
from serving import catalog as catalog_module
from serving.catalog import Catalog, CatalogError, build_index, load_catalog
from serving.index import prefix_rows, served_prefix
from serving.watcher import ModelWatcher
from training.common.config import EncoderConfig
from training.retrieval.io import ModelInfo
from training.retrieval.model import RetrievalModel
from training.retrieval.retriever import Retriever

ITEMS, DIM = 300, 16


def _retriever(dims: tuple[int, ...] = (4, 8), seed: int = 0) -> Retriever:
    torch.manual_seed(seed)
    config = EncoderConfig(kind="sasrec", dim=DIM, num_blocks=1, num_heads=1, max_len=10, dropout=0.0,
                           ffn_dim=DIM, matryoshka_dims=dims)  # fmt: skip
    model = RetrievalModel(config, ITEMS).eval()
    return Retriever(model.encoder, model.item_embedding.weight, ModelInfo(config, ITEMS))


def _catalog(
    prefix: int, rescore: int, index: str = "exact", retriever: Retriever | None = None, codec: str = "flat"
) -> Catalog:
    retriever = retriever or _retriever()
    item_ids = np.array(["", *(f"item-{n}" for n in range(1, ITEMS + 1))], dtype=object)
    vectors = prefix_rows(retriever.item_vectors[1:].numpy(), prefix)
    built, kind = build_index(vectors, 10_000 if index == "exact" else 0, 8, 64, codec)
    index_of = {item: n for n, item in enumerate(item_ids) if n}
    return Catalog("1", "run", retriever, item_ids, index_of, built, kind, {}, prefix_dims=prefix, rescore=rescore)


def _queries(count: int = 20, seed: int = 1) -> np.ndarray:
    queries = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def test_prefix_rows_normalise_each_prefix_on_its_own() -> None:
    rows = np.array([[3.0, 4.0, 100.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    assert np.allclose(prefix_rows(rows, 2), [[0.6, 0.8], [0.0, 0.0]])  # a zero prefix stays zero, no NaN
    assert np.array_equal(prefix_rows(rows, 0), rows)


@pytest.mark.parametrize(
    ("setting", "trained", "expected"),
    [
        (None, (8, 16, 32), 16),
        (None, (16, 32), 16),
        (None, (8, 12), 0),
        (None, (), 0),
        (0, (16, 32), 0),
        (32, (16, 32), 32),
    ],
)
def test_the_served_prefix_defaults_to_the_smallest_trained_width_of_16_or_more(
    setting: int | None, trained: tuple[int, ...], expected: int
) -> None:
    assert served_prefix(setting, trained, 64) == expected


def test_the_default_prefix_is_off_for_an_hnsw_index_and_a_set_one_stays() -> None:
    assert served_prefix(None, (16, 32), 64, exact_index=False) == 0
    assert served_prefix(32, (16, 32), 64, exact_index=False) == 32


@pytest.mark.parametrize(
    ("setting", "trained", "message"),
    [
        (64, (16, 32), r"not below the model's dim 64; allowed: 16, 32, 0 \(off\)"),
        (16, (), r"needs a model trained with --matryoshka-dims.*allowed: 0 \(off\)"),
        (24, (16, 32), r"not a width the model was trained on; allowed: 16, 32, 0 \(off\)"),
    ],
)
def test_a_prefix_the_model_cannot_serve_is_refused_with_the_allowed_values(
    setting: int, trained: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        served_prefix(setting, trained, 64)


def test_rescoring_every_item_is_the_exact_full_width_search() -> None:
    full, two_stage = _catalog(0, 0), _catalog(4, ITEMS)
    assert two_stage.index.d == 4 and full.index.d == DIM
    queries = _queries()
    exclude = [set(range(1, 30, 3)) for _ in queries]
    for got, want in zip(two_stage.search(queries, 50, exclude), full.search(queries, 50, exclude), strict=True):
        assert [item for item, _ in got] == [item for item, _ in want]
        assert [score for _, score in got] == pytest.approx([score for _, score in want], abs=1e-5)


def test_an_fp16_prefix_index_holds_half_the_bytes_and_rescored_in_full_is_the_exact_search() -> None:
    full, two_stage = _catalog(0, 0), _catalog(4, ITEMS, codec="fp16")
    assert two_stage.index.code_size == 4 * 2 and two_stage.index.ntotal == ITEMS  # fp16: 2 bytes a dim
    queries = _queries()
    for got, want in zip(two_stage.search(queries, 50, [set()] * 20), full.search(queries, 50, [set()] * 20),
                         strict=True):  # fmt: skip
        assert [item for item, _ in got] == [item for item, _ in want]
        assert [score for _, score in got] == pytest.approx([score for _, score in want], abs=1e-5)


def test_an_unknown_index_codec_is_refused_with_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="unknown index codec 'int4'; allowed: flat, fp16"):
        build_index(np.zeros((3, 4), np.float32), 10, 8, 64, "int4")


def test_scores_are_full_width_cosines_of_the_prefix_stages_candidates() -> None:
    retriever = _retriever()
    two_stage = _catalog(4, 25, retriever=retriever)
    vectors = retriever.item_vectors.numpy()
    queries = _queries()
    answers = two_stage.search(queries, 10, [set() for _ in queries])
    for query, answer in zip(queries, answers, strict=True):
        items = [item for item, _ in answer]
        _, ids = two_stage.index.search(prefix_rows(query[None], 4), 25)  # the prefix stage alone
        candidates = set((ids[0] + 1).tolist())
        assert set(items) <= candidates  # only what the prefix index found ...
        full = {item: float(vectors[item] @ query) for item in candidates}
        assert items == sorted(full, key=lambda item: -full[item])[:10]  # ... ordered by the full width
        assert [score for _, score in answer] == pytest.approx([full[item] for item in items], abs=1e-5)


def test_a_deeper_rescore_finds_more_of_the_exact_top() -> None:
    """On a model without Matryoshka training the prefix ranks poorly: depth is what recovers recall."""
    retriever = _retriever(dims=())
    exact = _catalog(0, 0, retriever=retriever)
    queries = _queries(50)
    none: list[set[int]] = [set() for _ in queries]
    truth = [{item for item, _ in row} for row in exact.search(queries, 10, none)]

    def recall(depth: int) -> float:
        found = _catalog(4, depth, retriever=retriever).search(queries, 10, none)
        return float(np.mean([len(truth[n] & {item for item, _ in row}) / 10 for n, row in enumerate(found)]))

    shallow, deep, everything = recall(10), recall(100), recall(ITEMS)
    assert shallow < deep < everything == 1.0


def _settings(tmp_path: Path, **serve: Any) -> Settings:
    return Settings(home=tmp_path, serve=serve)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("serve", "dims", "reason"),
    [({"prefix_dims": 16}, (4, 8), "not below the model's dim 16"), ({"prefix_dims": 8}, (), "--matryoshka-dims")],
)
def test_load_refuses_a_prefix_the_model_cannot_serve_and_the_previous_version_serves_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve: dict[str, int], dims: tuple[int, ...], reason: str
) -> None:
    monkeypatch.setattr(catalog_module, "load_registered", lambda *args: _retriever(dims))
    with pytest.raises(CatalogError, match=f"version 2 of .* is not servable: .*{reason}"):
        load_catalog(_settings(tmp_path, **serve), "2", exact_max_items=1, hnsw_m=8, ef_search=8)

    previous, alias = _catalog(0, 0), ["1"]

    def load(version: str) -> Catalog:
        if version == "1":
            return previous
        return load_catalog(_settings(tmp_path, **serve), version, exact_max_items=1, hnsw_m=8, ef_search=8)

    watcher: ModelWatcher[Catalog] = ModelWatcher(lambda: alias[0], load, poll_s=0.001)
    watcher.load_now()
    watcher.start()
    try:
        alias[0] = "2"
        deadline = time.monotonic() + 10
        while watcher.failed_version is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        watcher.stop()
    assert watcher.current is previous and watcher.failed_version == "2"
    assert watcher.last_error is not None and reason in watcher.last_error  # /healthz: degraded, with this

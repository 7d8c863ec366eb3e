"""The Retriever: exported models load and score without TorchRec; chunked top-k is exact."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from training.common.config import EncoderConfig
from training.retrieval.io import ModelInfo, save_model
from training.retrieval.model import RetrievalModel
from training.retrieval.retriever import Retriever

NUM_ITEMS = 50


def _export(directory: Path, kind: str = "hstu") -> Path:
    torch.manual_seed(0)
    config = EncoderConfig(kind=kind, dim=8, max_len=10)
    model = RetrievalModel(config, NUM_ITEMS)
    return save_model(directory, ModelInfo(config, NUM_ITEMS, {"features/item_vocab": 3}), model.state_dict())


def _batch(histories: list[list[int]]) -> dict[str, torch.Tensor]:
    width = max(len(h) for h in histories)
    items = torch.tensor([h + [0] * (width - len(h)) for h in histories])
    return {
        "item_indices": items,
        "action_ids": (items > 0).long() * 2,
        "timestamps": torch.arange(width).repeat(len(histories), 1) * 60_000,
        "lengths": torch.tensor([len(h) for h in histories]),
    }


def test_an_exported_model_scores_without_importing_torchrec(tmp_path: Path) -> None:
    directory = _export(tmp_path / "model")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from training.retrieval.retriever import Retriever
        retriever = Retriever.from_directory({str(directory)!r})
        batch = {{"item_indices": torch.tensor([[3, 4]]), "action_ids": torch.tensor([[2, 2]]),
                  "timestamps": torch.tensor([[0, 60000]]), "lengths": torch.tensor([2])}}
        scores, items = retriever.top_k(batch, 5)
        assert items.shape == (1, 5) and 0 not in items.tolist()[0]
        loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("torchrec", "fbgemm_gpu", "ray"))
        print(loaded)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_chunked_top_k_equals_the_whole_catalogue_and_honours_exclusions(tmp_path: Path) -> None:
    retriever = Retriever.from_directory(_export(tmp_path / "model", "sasrec"))
    batch = _batch([[1, 2, 3], [7], [10, 11, 12, 13]])
    queries = retriever.queries(batch)
    expected = (queries @ retriever.item_vectors.T)[:, 1:].topk(10, dim=1)
    for chunk in (1, 7, 16, 1000):
        scores, items = retriever.top_k(batch, 10, chunk_items=chunk)
        assert torch.equal(items, expected.indices + 1)
        assert torch.allclose(scores, expected.values)
    excluded = [torch.tensor([int(i) for i in expected.indices[0, :3] + 1]), torch.tensor([], dtype=torch.long),
                torch.tensor([int(expected.indices[2, 0]) + 1])]  # fmt: skip
    _, items = retriever.top_k(batch, 10, exclude=excluded, chunk_items=7)
    assert not set(items[0].tolist()) & set(excluded[0].tolist())
    assert torch.equal(items[1], expected.indices[1] + 1)
    assert items[2, 0] == expected.indices[2, 1] + 1


def test_items_newer_than_the_model_read_as_padding(tmp_path: Path) -> None:
    retriever = Retriever.from_directory(_export(tmp_path / "model"))
    known = retriever.queries(_batch([[5, 6]]))
    with_new = retriever.queries({**_batch([[5, 6]]), "item_indices": torch.tensor([[5, NUM_ITEMS + 9]])})
    padded = retriever.queries({**_batch([[5, 6]]), "item_indices": torch.tensor([[5, 0]])})
    assert torch.equal(with_new, padded) and not torch.equal(with_new, known)
    assert retriever.item_rows.shape == (NUM_ITEMS + 1, 8)

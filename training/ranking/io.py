"""The exported ranker and the one scoring path of ranking (no Ray, no DMP, no TorchRec).

Layout (the ``model/`` artifact of every ranking run and ``streamrec-ranking`` version)::

    ranking.json   format, "kind": "ranking", ranker config (kind, encoder, mixture, tasks...),
                   num_items, feature table versions read, label window_ms
    weights.pt     state dict of training.ranking.model.RankingModel (torch.save):
                   item_embedding.weight (num_items + 1, dim; row 0 = padding) and tower.*

Serving calls ``RankingScorer.score(history, candidates, ts)``: one history (oldest event
first) and any number of candidate item indices -> a (candidates, tasks) array of
probabilities. The history is encoded once; only the target attention and the heads run per
candidate. Item indices are those of ``features/item_vocab`` (append-only), so items newer
than the model (index > ``num_items``) read as padding in histories and are scored with the
padding row (an untrained vector) as candidates: serving should treat them as cold.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ingestion.schema import ACTION_IDS
from training.ranking.config import RankerConfig
from training.ranking.model import RankingModel

FORMAT = 1
KIND = "ranking"
METADATA_FILE = "ranking.json"
WEIGHTS_FILE = "weights.pt"


@dataclass(frozen=True)
class RankingInfo:
    """What ranking.json records."""

    config: RankerConfig
    num_items: int
    feature_versions: dict[str, int] = field(default_factory=dict)
    window_ms: int = 0


def save_ranking_model(directory: Path, info: RankingInfo, weights: dict[str, torch.Tensor]) -> Path:
    """Write the model directory from RankingModel ``weights``; returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": FORMAT,
        "kind": KIND,
        "model": info.config.model_dump(mode="json"),
        "num_items": info.num_items,
        "feature_versions": info.feature_versions,
        "window_ms": info.window_ms,
    }
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    torch.save(weights, directory / WEIGHTS_FILE)
    return directory


def read_ranking_info(directory: Path) -> RankingInfo:
    """The metadata of a ranking model directory."""
    path = Path(directory) / METADATA_FILE
    if not path.exists():
        raise ValueError(f"{directory} holds no {METADATA_FILE}: not a ranking model")
    metadata = json.loads(path.read_text())
    if metadata.get("format") != FORMAT or metadata.get("kind") != KIND:
        raise ValueError(
            f"{directory} holds format {metadata.get('format')} {metadata.get('kind')}, this reads {FORMAT}"
        )
    return RankingInfo(
        config=RankerConfig.model_validate(metadata["model"]),
        num_items=int(metadata["num_items"]),
        feature_versions={key: int(value) for key, value in metadata["feature_versions"].items()},
        window_ms=int(metadata["window_ms"]),
    )


def read_ranking_weights(directory: Path) -> dict[str, torch.Tensor]:
    return torch.load(Path(directory) / WEIGHTS_FILE, map_location="cpu", weights_only=True)


def load_ranking_model(directory: Path | str) -> tuple[RankingModel, RankingInfo]:
    """The plain ranker of a model directory, in eval mode, and its metadata."""
    info = read_ranking_info(Path(directory))
    model = RankingModel(info.config, info.num_items)
    model.load_state_dict(read_ranking_weights(Path(directory)))
    return model.eval(), info


class RankingScorer:
    """Per-task probabilities of one model; what evaluation and serving call."""

    def __init__(self, model: RankingModel, info: RankingInfo | None = None) -> None:
        self.model = model.eval()
        self.info = info
        self.tasks: tuple[str, ...] = model.config.tasks
        self.num_items = model.num_items
        self.max_len = model.config.encoder.max_len
        self.device = model.item_embedding.weight.device

    @classmethod
    def from_directory(cls, directory: Path | str) -> RankingScorer:
        """The scorer of an exported model directory (``ranking_io`` layout)."""
        model, info = load_ranking_model(directory)
        return cls(model, info)

    def score(
        self, history: Sequence[tuple[int, str, int]], candidates: Sequence[int], ts: int | None = None
    ) -> np.ndarray:
        """(len(candidates), len(tasks)) float32 probabilities of ``candidates`` (item indices)
        shown at ``ts`` (epoch ms, default now) to a user whose ``history`` is (item index,
        action name, ts) events, oldest first (only the last ``max_len`` are read)."""
        cut = list(history)[-self.max_len :]
        length = max(len(cut), 1)
        items = torch.zeros((1, length), dtype=torch.long)
        actions = torch.zeros((1, length), dtype=torch.long)
        stamps = torch.zeros((1, length), dtype=torch.long)
        if cut:
            items[0, : len(cut)] = torch.tensor([event[0] for event in cut])
            actions[0, : len(cut)] = torch.tensor([ACTION_IDS[event[1]] for event in cut])
            stamps[0, : len(cut)] = torch.tensor([event[2] for event in cut])
        now = int(time.time() * 1000) if ts is None else int(ts)
        probabilities = self.score_tensors(
            items[0], actions[0], stamps[0], torch.as_tensor(list(candidates), dtype=torch.long), now, len(cut)
        )
        return probabilities.numpy()

    def score_tensors(
        self,
        item_indices: torch.Tensor,
        action_ids: torch.Tensor,
        timestamps: torch.Tensor,
        candidates: torch.Tensor,
        ts: int,
        length: int | None = None,
    ) -> torch.Tensor:
        """``score`` for tensors: one history (L,) (its first ``length`` positions, default all)
        and candidates (M,) -> (M, T) probabilities; the history is encoded once."""
        length = len(item_indices) if length is None else length
        batch = {
            "item_indices": self._known(item_indices.reshape(1, -1)),
            "action_ids": action_ids.reshape(1, -1),
            "timestamps": timestamps.reshape(1, -1),
            "lengths": torch.tensor([length]),
        }
        batch = {key: value.to(self.device) for key, value in batch.items()}
        with torch.inference_mode():
            history = self.model.encode(
                batch["item_indices"], batch["action_ids"], batch["timestamps"], batch["lengths"]
            )
            candidate_rows = self._known(candidates.reshape(1, -1).to(self.device))
            logits = self.model.score(history, candidate_rows, torch.tensor([ts], device=self.device))
            return torch.sigmoid(logits[0].float()).cpu()

    def score_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T) probabilities of a batch of RankingExamples (one candidate per row)."""
        lengths = batch["lengths"].to(self.device)
        width = max(int(lengths.max()), 1) if len(lengths) else 1
        if width > self.max_len:
            raise ValueError(f"histories of {width} events exceed the model's max_len {self.max_len}")
        inputs = {
            "item_indices": self._known(batch["item_indices"][:, :width].to(self.device)),
            "action_ids": batch["action_ids"][:, :width].to(self.device),
            "timestamps": batch["timestamps"][:, :width].to(self.device),
            "lengths": lengths,
            "candidates": self._known(batch["candidates"].to(self.device)),
            "ts": batch["ts"].to(self.device),
        }
        with torch.inference_mode():
            return torch.sigmoid(self.model(inputs).float()).cpu()

    def _known(self, indices: torch.Tensor) -> torch.Tensor:
        return indices.masked_fill(indices > self.num_items, 0)

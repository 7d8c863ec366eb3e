"""The exported model: a directory anyone can load without Ray, DMP or the training run.

Layout (also the ``model/`` artifact of every MLflow run and registered version)::

    model.json               format, encoder config, num_items, feature table versions read
    weights.pt               state dict of training.retrieval.model.RetrievalModel (torch.save)
    item_embeddings.parquet  item_index (int64, 1..num_items), embedding (float32[dim]: the item's scored
                             vector, L2-normalised under cosine scoring, the raw row under dot)

Item indices are those of ``features/item_vocab`` at the recorded version (and every later
one: the vocabulary is append-only), so ``item_index`` joins the vocabulary to get item ids.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from infra.settings import Settings
from training.common.config import EncoderConfig
from training.common.model import PLAIN_WEIGHT
from training.common.scoring import scored_vectors
from training.retrieval.model import RetrievalModel

FORMAT = 1
METADATA_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
EMBEDDINGS_FILE = "item_embeddings.parquet"


@dataclass(frozen=True)
class ModelInfo:
    """What model.json records."""

    encoder: EncoderConfig
    num_items: int
    feature_versions: dict[str, int] = field(default_factory=dict)


def save_model(directory: Path, info: ModelInfo, weights: dict[str, torch.Tensor]) -> Path:
    """Write the model directory from RetrievalModel ``weights``; returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": FORMAT,
        "encoder": info.encoder.model_dump(),
        "num_items": info.num_items,
        "feature_versions": info.feature_versions,
    }
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    torch.save(weights, directory / WEIGHTS_FILE)
    table = scored_vectors(weights[PLAIN_WEIGHT].float(), info.encoder.scoring)[1:].numpy()
    dim = table.shape[1]
    embeddings = pa.FixedSizeListArray.from_arrays(pa.array(table.reshape(-1), pa.float32()), dim)
    pq.write_table(
        pa.table({"item_index": pa.array(np.arange(1, len(table) + 1), pa.int64()), "embedding": embeddings}),
        directory / EMBEDDINGS_FILE,
    )
    return directory


def read_info(directory: Path) -> ModelInfo:
    """The metadata of a model directory."""
    metadata = json.loads((directory / METADATA_FILE).read_text())
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{directory} holds model format {metadata.get('format')}, this code reads {FORMAT}")
    return ModelInfo(
        encoder=EncoderConfig(**metadata["encoder"]),
        num_items=int(metadata["num_items"]),
        feature_versions={key: int(value) for key, value in metadata["feature_versions"].items()},
    )


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The RetrievalModel state dict of a model directory (on CPU)."""
    return torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)


def load_model(directory: Path | str) -> tuple[RetrievalModel, ModelInfo]:
    """The plain model of a model directory, in eval mode, and its metadata."""
    directory = Path(directory)
    info = read_info(directory)
    model = RetrievalModel(info.encoder, info.num_items)
    model.load_state_dict(read_weights(directory))
    return model.eval(), info


def warm_start_state(
    settings: Settings, version: str, log: Callable[[str], None]
) -> tuple[ModelInfo, dict[str, torch.Tensor]]:
    """(ModelInfo, weights) of a registered retrieval model version, for the workers of a
    retrieval or ranking run to start from."""
    from training.common import tracking  # MLflow: only runs read registered versions, serving does not

    with tracking.downloaded_version(settings, version) as directory:
        info = read_info(directory)
        weights = read_weights(directory)
    log(f"warm start from {settings.mlflow.registered_model} version {version}: {info.num_items} items known")
    return info, weights

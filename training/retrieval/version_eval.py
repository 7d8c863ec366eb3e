"""Metrics of a registered model version (`streamrec evaluate`)."""

from __future__ import annotations

from features.reader import FeatureVersions, latest_versions, load_examples
from infra.settings import Settings
from training.common import tracking
from training.retrieval.evaluation import split_metrics, split_ranks
from training.retrieval.io import read_info
from training.retrieval.metrics import DEFAULT_KS
from training.retrieval.retriever import Retriever


def evaluate_version(
    settings: Settings, version: str, split: str = "test", *, latest_features: bool = False, sampled: bool = False
) -> tuple[dict[str, float], dict[str, int]]:
    """Metrics of a registered model version on ``split`` and the feature versions read.

    By default the split is read at the feature versions the model was trained on; with
    ``latest_features`` at the newest ones (items the model has never seen then rank last).
    """
    with tracking.downloaded_version(settings, version) as directory:
        retriever = Retriever.from_directory(directory)
        info = read_info(directory)
    versions = latest_versions(settings) if latest_features else FeatureVersions.from_dict(info.feature_versions)
    examples = load_examples(settings, split, versions, max_len=info.encoder.max_len)
    ranks = split_ranks(retriever, examples, sampled=sampled)
    name = "val" if split == "validation" else split
    return split_metrics(ranks, DEFAULT_KS, name), versions.as_dict()

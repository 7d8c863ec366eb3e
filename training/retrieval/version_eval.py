"""Metrics of a registered model version (`streamrec evaluate`): on a leave-last-out split, or
time-ordered on a window of events (``evaluate_version_window``, ``training.retrieval.prequential``)."""

from __future__ import annotations

import json

import numpy as np
from deltalake import DeltaTable

from features.reader import FeatureVersions, latest_versions, load_examples, read_sequences
from features.tables import ITEM_VOCAB_TABLE
from infra.settings import Settings
from training.common import tracking
from training.retrieval.evaluation import split_metrics, split_ranks
from training.retrieval.io import read_info
from training.retrieval.metrics import DEFAULT_KS
from training.retrieval.prequential import NEVER, TimeWindow, WindowEvaluation, evaluate_window, window_rows
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


def evaluate_version_window(
    settings: Settings,
    version: str,
    window_start_ms: int | None,
    window_ms: int,
    versions: FeatureVersions | None = None,
    new_after_ms: int | None = None,
) -> tuple[WindowEvaluation, dict[str, int]]:
    """Time-ordered metrics (``window_*``) of a registered version on the positive events in
    ``(window_start_ms, window_start_ms + window_ms]`` at feature ``versions`` (default the newest),
    and the feature versions read. ``window_start_ms`` None: the most recent window, ending at
    the newest event; ``new_after_ms``: where "new" items start (default the window's start).
    Raises ValueError on bad windows (``training.retrieval.prequential``)."""
    versions = versions or latest_versions(settings)
    with tracking.downloaded_version(settings, version) as directory:
        retriever = Retriever.from_directory(directory)
        info = read_info(directory)
    user_ids, flat = read_sequences(settings, versions.user_sequences)
    if window_start_ms is None:
        if len(flat.timestamps) == 0:
            raise ValueError(f"user_sequences version {versions.user_sequences} holds no events")
        window_start_ms = int(flat.timestamps.max()) - window_ms
    window = TimeWindow(window_start_ms, window_ms)
    first_seen = item_first_seen(settings, versions.item_vocab)
    rows = window_rows(
        user_ids, flat, window, info.encoder.max_len, len(first_seen) - 1, stored_max_len=settings.features.max_len
    )
    return evaluate_window(retriever, rows, first_seen, window, new_after_ms=new_after_ms), versions.as_dict()


def item_first_seen(settings: Settings, vocab_version: int) -> np.ndarray:
    """(largest index + 1,) the first-seen ts of each item index at ``vocab_version`` (index 0,
    padding, and any gap: ``NEVER``)."""
    table = DeltaTable(settings.table_uri(ITEM_VOCAB_TABLE), version=vocab_version).to_pyarrow_table(
        columns=["item_index", "first_seen_ts"]
    )
    indices = np.asarray(table.column("item_index").to_numpy(), dtype=np.int64)
    first_seen = np.full(int(indices.max(initial=0)) + 1, NEVER, dtype=np.int64)
    first_seen[indices] = np.asarray(table.column("first_seen_ts").to_numpy(), dtype=np.int64)
    return first_seen


def log_window(settings: Settings, version: str, result: WindowEvaluation, versions: dict[str, int]) -> str:
    """Log a window's metrics to the registered version's MLflow run, at step = the window's end in
    seconds (a chart over time), and its bounds as tags; returns the run id."""
    client = tracking.client(settings)
    name = settings.mlflow.registered_model
    if version == "latest":
        found = client.search_model_versions(filter_string=f"name = '{name}'")
        version = str(max(int(v.version) for v in found))
    run_id = client.get_model_version(name, version).run_id or ""
    if run_id and not result.empty:
        tracking.log_metrics(settings, run_id, result.metrics, step=result.window.end_ms // 1000)
        tracking.set_tags(
            settings,
            run_id,
            {
                "window_last_start_ms": str(result.window.start_ms),
                "window_last_length_ms": str(result.window.length_ms),
                "window_last_feature_versions": json.dumps(versions, sort_keys=True),
            },
        )
    return run_id

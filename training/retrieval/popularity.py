"""The popularity baseline as an MLflow run: the comparison point of every retrieval model."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from features.reader import latest_versions, load_examples
from features.subsample import subsample_users
from infra.settings import Settings
from training.common import tracking
from training.retrieval.config import TrainConfig
from training.retrieval.evaluation import PopularityScorer, split_metrics, split_ranks


def train_popularity(settings: Settings, config: TrainConfig, log: Callable[[str], None] = print) -> dict[str, float]:
    """The popularity baseline as an MLflow run (val and test metrics; nothing to register)."""
    versions = latest_versions(settings)
    run_id = tracking.start_run(
        settings,
        f"popularity-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
        params={"model": "popularity", **{f"version.{t}": str(v) for t, v in versions.as_dict().items()}},
        tags={"model": "popularity"},
        feature_versions=versions.as_dict(),
    )
    train_split = subsample_users(
        load_examples(settings, "train", versions, max_len=config.encoder.max_len), config.data_fraction
    )
    metrics: dict[str, float] = {}
    for split, name in (("validation", "val"), ("test", "test")):
        examples = load_examples(settings, split, versions, max_len=config.encoder.max_len)
        scorer = PopularityScorer(train_split, examples.num_items)
        ranks = split_ranks(scorer, examples, seed=config.seed, **config.eval_options())
        metrics.update(split_metrics(ranks, config.eval_ks, name))
    tracking.log_metrics(settings, run_id, metrics, step=0)
    tracking.client(settings).set_terminated(run_id, "FINISHED")
    log(f"popularity baseline logged as MLflow run {run_id}")
    return metrics

"""The driver of a ranking run: Ray Train, then test evaluation, MLflow artifacts and registry.

``train_ranking`` pins the versions of features/ranking_examples and item_vocab, opens an MLflow
run, and runs ``training.ranking.worker.ranking_worker`` on ``workers`` Ray Train workers.
Afterwards it takes the checkpoint with the best validation metric (``selection_metric``,
default ``auc_click``), loads it as the exported plain ranker (``training.ranking.io``, the path
serving uses) and evaluates it on the validation and test splits, logs the metrics, the
calibration tables and plots, the model directory and the training curves, and registers a
new version of the ranking model (``ranking_model_name``: ``streamrec-ranking`` by default).

``train_ranking_popularity`` logs the popularity baseline's metrics as a run (nothing to register).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from features.ranking_reader import RankingVersions, latest_ranking_versions, load_ranking_examples
from infra.settings import Settings
from training.common import driver, tracking
from training.common.plots import plot_curves
from training.common.worker_loop import MODEL_DIR
from training.ranking.config import RankingTrainConfig
from training.ranking.evaluation import PopularityRanker, evaluate, predict
from training.ranking.io import RankingScorer
from training.ranking.metrics import plot_calibration
from training.ranking.worker import RankingJob, ranking_worker
from training.retrieval.io import warm_start_state  # a ranker may start from a retrieval version

Log = Callable[[str], None]
SHOWN = ("train_loss", "val_auc_click", "val_gauc_click", "val_auc_like", "val_auc_purchase")
RANKING_DESCRIPTION = "Multi-task rankers (click, like, purchase, skip, dislike) trained by `streamrec train-ranking`."


@dataclass(frozen=True)
class RankingOutcome:
    """What a finished ranking run produced."""

    run_name: str
    run_id: str
    model_version: str
    best_epoch: int
    metrics: dict[str, float]  # best_val_*, val_* and test_* of the best epoch's model
    history: list[dict[str, float]]
    calibration: dict[str, dict[str, list[dict[str, float]]]]  # split -> task -> deciles


def train_ranking(
    settings: Settings, config: RankingTrainConfig, *, workers: int | None = None, log: Log = print
) -> RankingOutcome:
    """Train ``config`` on Ray Train, evaluate it, and register it (``ranking_model_name``)."""
    import ray

    storage = settings.train.storage or str(settings.checkpoint_dir)
    workers = workers or settings.train.workers
    driver.connect(settings)
    driver.check_resources(settings, workers, use_gpu=settings.train.use_gpu)
    versions = latest_ranking_versions(settings)
    kind = config.model.kind
    run_name = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_id = tracking.start_run(
        settings,
        run_name,
        params={**_params(config, versions), "workers": str(workers)},
        tags={"model": kind, "task": "ranking", "ray_run": run_name, "ray_storage": storage},
        feature_versions=versions.as_dict(),
    )
    log(f"run {run_name}: {kind} ({config.model.mixture}), {workers} worker(s), features {versions.as_dict()}")
    warm = warm_start_state(settings, config.warm_start, log) if config.warm_start else None
    job = RankingJob(
        settings=settings,
        config=config,
        versions=versions,
        run_id=run_id,
        use_gpu=settings.train.use_gpu,
        warm_start=ray.put(warm) if warm else None,
    )
    follower = _EpochLines(settings, run_id, config.epochs, log)
    result = driver.fit(ranking_worker, job, workers=workers, storage=storage, run_name=run_name, follower=follower,
                        what=f"ranking run {run_name}")  # fmt: skip
    with driver.finishing(settings, run_id, "streamrec-ranking-run-") as scratch:
        outcome = _finish(settings, config, versions, run_name, run_id, result, scratch, log)
    log(f"registered {ranking_model_name(settings, config)} version {outcome.model_version}")
    return outcome


def _params(config: RankingTrainConfig, versions: RankingVersions) -> dict[str, str]:
    params = config.flat_params()
    params.update({f"version.{table}": str(version) for table, version in versions.as_dict().items()})
    return params


def _finish(
    settings: Settings,
    config: RankingTrainConfig,
    versions: RankingVersions,
    run_name: str,
    run_id: str,
    result: Any,
    output: Path,
    log: Log,
) -> RankingOutcome:
    best = driver.best_epoch(result, config, output, f"ranking run {run_name}", log)
    best_epoch, history = best.epoch, best.history

    log(f"evaluating the best epoch ({best_epoch}) on the validation and test splits (exported model)")
    scorer = RankingScorer.from_directory(output / MODEL_DIR)
    metrics, calibration = best.best_val(), {}
    for split, name in (("validation", "val"), ("test", "test")):
        examples = load_ranking_examples(settings, split, versions, max_len=scorer.max_len)
        split_metrics, tables = evaluate(
            predict(scorer.score_batch, examples, config.eval_batch_size), scorer.tasks, name
        )
        metrics.update(split_metrics if name == "test" else {f"final_{k}": v for k, v in split_metrics.items()})
        calibration[name] = tables
        plot_calibration(tables, output / f"calibration_{name}.png", f"{config.model.kind}: {split} calibration")
    tracking.log_metrics(settings, run_id, {**metrics, "best_epoch": float(best_epoch)}, step=best_epoch)
    plot_curves(history, config.selection_metric, output / "training_curve.png")
    (output / "calibration.json").write_text(json.dumps(calibration, indent=2))
    summary = {"best_epoch": best_epoch, "metrics": metrics, "history": history}
    (output / "metrics.json").write_text(json.dumps(summary, indent=2))
    tracking.log_artifacts(settings, run_id, output)
    tags = {"model": config.model.kind, "run_name": run_name, "best_epoch": str(best_epoch)}
    version = register(settings, ranking_model_name(settings, config), run_id, tags)
    tracking.set_tags(settings, run_id, {"registered_version": version})
    return RankingOutcome(run_name, run_id, version, best_epoch, metrics, history, calibration)


def register(settings: Settings, name: str, run_id: str, tags: dict[str, str]) -> str:
    """A new version of registered model ``name`` from the run's ``model/`` artifact."""
    mlflow = tracking.client(settings)
    if not mlflow.search_registered_models(filter_string=f"name = '{name}'"):
        try:
            mlflow.create_registered_model(name, description=RANKING_DESCRIPTION)
        except MlflowException:  # created meanwhile by another run
            pass
    return tracking.register(settings.updated(registered_model=name), run_id, MODEL_DIR, tags)


def ranking_model_name(settings: Settings, config: RankingTrainConfig) -> str:
    """The registered model a ranking run registers into: the config's, else the settings'."""
    return config.registered_model or settings.mlflow.registered_ranking_model


def ranking_settings(settings: Settings, config: RankingTrainConfig) -> Settings:
    """``settings`` whose ``registered_model`` is the ranking model (for ``tracking.downloaded_version``)."""
    return settings.updated(registered_model=ranking_model_name(settings, config))


def train_ranking_popularity(
    settings: Settings, config: RankingTrainConfig | None = None, log: Log = print
) -> dict[str, float]:
    """The popularity baseline as an MLflow run: val and test metrics of per-item train rates."""
    config = config or RankingTrainConfig()
    versions = latest_ranking_versions(settings)
    run_id = tracking.start_run(
        settings,
        f"ranking-popularity-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
        params={"model": "ranking-popularity", **{f"version.{t}": str(v) for t, v in versions.as_dict().items()}},
        tags={"model": "ranking-popularity", "task": "ranking"},
        feature_versions=versions.as_dict(),
    )
    max_len = config.model.encoder.max_len
    train = load_ranking_examples(settings, "train", versions, max_len=max_len)
    baseline = PopularityRanker(train, train.num_items)
    metrics: dict[str, float] = {}
    for split, name in (("validation", "val"), ("test", "test")):
        examples = load_ranking_examples(settings, split, versions, max_len=max_len)
        split_metrics, _ = evaluate(predict(baseline.score_batch, examples), examples.tasks, name)
        metrics.update(split_metrics)
    tracking.log_metrics(settings, run_id, metrics, step=0)
    tracking.client(settings).set_terminated(run_id, "FINISHED")
    log(f"ranking popularity baseline logged as MLflow run {run_id}")
    return metrics


class _EpochLines:
    """One line per epoch on the driver, from the metrics rank 0 logs to MLflow."""

    def __init__(self, settings: Settings, run_id: str, epochs: int, log: Log) -> None:
        self.settings, self.run_id, self.epochs, self.log = settings, run_id, epochs, log
        self.shown: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="streamrec-ranking-epochs", daemon=True)

    def __enter__(self) -> _EpochLines:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _follow(self) -> None:
        while not self._stop.wait(2.0):
            self.poll()

    def poll(self) -> None:
        try:
            client = tracking.client(self.settings)
            keys = (*SHOWN, "train_seconds")
            history = {key: {m.step: m.value for m in client.get_metric_history(self.run_id, key)} for key in keys}
        except MlflowException:
            return
        for epoch in sorted(set(history["train_loss"]) - self.shown):  # rank 0 logs an epoch in one batch
            self.shown.add(epoch)
            shown = ", ".join(f"{key} {history[key][epoch]:.4f}" for key in SHOWN if epoch in history[key])
            self.log(f"epoch {epoch}/{self.epochs}: {shown} ({history['train_seconds'].get(epoch, 0.0):.1f}s)")

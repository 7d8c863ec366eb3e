"""The driver of a training run: Ray Train, then test evaluation, MLflow artifacts and registry.

(The popularity baseline is ``training.retrieval.popularity``; evaluating a registered version,
``training.retrieval.version_eval``; job records, ``training.common.jobs``.)

``train`` pins the feature table versions, opens an MLflow run, writes the run's job to
its Ray Train storage folder (so ``--resume NAME`` repeats exactly the same job), and runs
``training.retrieval.worker.train_worker`` on ``workers`` Ray Train workers. Ray Train restores the
latest checkpoint after a worker failure (FailureConfig) and when a run with the same
name is started again (``--resume``). Afterwards the driver takes the checkpoint with the
best validation metric, evaluates it on the test split, logs the model directory, a
training-curve PNG and the metrics, and registers a new version of the retrieval model.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from features.examples import SequenceExamples
from features.reader import FeatureVersions, latest_versions, load_examples
from infra.settings import Settings
from training.common import driver, tracking
from training.common.device import Device, local_device, resolve_precision
from training.common.jobs import read_job, write_job
from training.common.plots import plot_curves
from training.common.progress import EpochFollower
from training.common.worker_loop import MODEL_DIR
from training.retrieval.config import TrainConfig
from training.retrieval.evaluation import split_metrics, split_ranks
from training.retrieval.io import warm_start_state
from training.retrieval.retriever import Retriever
from training.retrieval.worker import TrainJob, train_worker

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainOutcome:
    """What a finished run produced."""

    run_name: str
    run_id: str
    model_version: str
    best_epoch: int
    metrics: dict[str, float]  # best_val_* and test_*
    history: list[dict[str, float]]


def train(
    settings: Settings,
    config: TrainConfig,
    *,
    workers: int | None = None,
    resume: str | None = None,
    warm_start: str | None = None,
    versions: FeatureVersions | None = None,
    tags: dict[str, str] | None = None,
    register: bool = True,
    log: Log = print,
) -> TrainOutcome:
    """Train ``config`` on Ray (or resume the run named ``resume``) and register the model.

    A new run reads the feature tables at ``versions`` (default the latest) and gets ``tags``
    besides its own (a sweep's trial names its parent run so); ``register=False`` leaves the
    registry alone (the outcome's model_version is then "")."""
    import ray

    storage = settings.train.storage or str(settings.checkpoint_dir)
    workers = workers or settings.train.workers
    driver.connect(settings)
    if resume:
        job_record = read_job(storage, resume)
        config = TrainConfig.model_validate(job_record["config"])
        versions = FeatureVersions.from_dict(job_record["versions"])
        run_name, run_id, warm_start = resume, job_record["run_id"], job_record["warm_start"]
        log(f"resuming run {run_name} (MLflow run {run_id})")
    else:
        versions = versions or latest_versions(settings)
        run_name = f"{config.encoder.kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    device = driver.run_device(settings, config.device, workers)
    use_gpu = device == "cuda"
    driver.check_resources(settings, workers, use_gpu=use_gpu)
    # Fetched before a new run is created, so a bad version fails without leaving a run behind.
    warm_state = warm_start_state(settings, warm_start, log) if warm_start else None
    if warm_start and not resume:  # a resumed run's recorded config already has it
        config = config.warm_started(use_gpu)
        log(f"warm start: item table learning rate {config.table_optimizer(use_gpu)[1]:g}")
    if not resume:
        run_id = tracking.start_run(
            settings,
            run_name,
            params=_params(config, versions, workers, warm_start, device),
            tags={"model": config.encoder.kind, "ray_run": run_name, "ray_storage": storage, **(tags or {})},
            feature_versions=versions.as_dict(),
        )
        write_job(storage, run_name, {"config": config.model_dump(mode="json"), "versions": versions.as_dict(),
                                      "run_id": run_id, "warm_start": warm_start})  # fmt: skip
    precision = resolve_precision(config.precision, device)
    log(f"run {run_name}: {config.encoder.kind}, {workers} worker(s) on {device} ({precision}), "
        f"features {versions.as_dict()}")  # fmt: skip
    job = TrainJob(
        settings=settings,
        config=config,
        versions=versions,
        run_id=run_id,
        use_gpu=use_gpu,
        warm_start=ray.put(warm_state) if warm_state else None,
        fault_marker=str(settings.home / "train-faults" / run_name) if config.fail_once_after_epoch else None,
    )
    result = driver.fit(
        train_worker, job, workers=workers, storage=storage, run_name=run_name, what=f"run {run_name}",
        follower=EpochFollower(settings, run_id, config.epochs, log),
        hint=f"\ncontinue it with `streamrec train --resume {run_name}`",
    )  # fmt: skip
    with driver.finishing(settings, run_id, "streamrec-run-") as scratch:
        outcome = _evaluate_and_register(settings, config, versions, run_name, run_id, result, scratch, log, register)
    if register:
        log(f"registered {settings.mlflow.registered_model} version {outcome.model_version}")
    return outcome


def _params(
    config: TrainConfig, versions: FeatureVersions, workers: int, warm_start: str | None, device: Device
) -> dict[str, str]:
    params = config.flat_params()
    table_optimizer, table_lr = config.table_optimizer(device == "cuda")  # what "auto" resolved to on this device
    params.update(table_optimizer=table_optimizer, table_lr=str(table_lr))
    params.update(resolved_device=device, resolved_precision=resolve_precision(config.precision, device))
    params.update({f"version.{table}": str(version) for table, version in versions.as_dict().items()})
    params.update(workers=str(workers), warm_start=warm_start or "")
    return params


def _split_metrics(retriever: Retriever, examples: SequenceExamples, config: TrainConfig, prefix: str) -> dict:
    """Metrics of ``retriever`` on a whole split, keys prefixed with ``prefix``."""
    ranks = split_ranks(retriever, examples, seed=config.seed, **config.eval_options())
    return split_metrics(ranks, config.eval_ks, prefix)


def _evaluate_and_register(
    settings: Settings,
    config: TrainConfig,
    versions: FeatureVersions,
    run_name: str,
    run_id: str,
    result: Any,
    output: Path,
    log: Log,
    register: bool,
) -> TrainOutcome:
    best = driver.best_epoch(result, config, output, f"run {run_name}", log)
    best_epoch, history = best.epoch, best.history

    # The best model is evaluated on the driver's own GPU when it has one (a CPU head node has none).
    retriever = Retriever.from_directory(output / MODEL_DIR, device=local_device(config.device))
    metrics = best.best_val()
    val = load_examples(settings, "validation", versions, max_len=config.encoder.max_len)
    if 0 < config.val_users < len(val):
        log(f"validating the best epoch ({best_epoch}) on all {len(val)} users (epochs saw {config.val_users})")
        metrics = {key.replace("best_val_", "best_val_sample_"): value for key, value in metrics.items()}
        metrics.update(_split_metrics(retriever, val, config, "best_val"))
    log(f"evaluating the best epoch ({best_epoch}) on the test split")
    test = load_examples(settings, "test", versions, max_len=config.encoder.max_len)
    metrics.update(_split_metrics(retriever, test, config, "test"))
    tracking.log_metrics(settings, run_id, {**metrics, "best_epoch": float(best_epoch)}, step=best_epoch)

    plot_curves(history, config.selection_metric, output / "training_curve.png")
    summary = {"best_epoch": best_epoch, "metrics": metrics, "history": history}
    (output / "metrics.json").write_text(json.dumps(summary, indent=2))
    tracking.log_artifacts(settings, run_id, output)
    if not register:
        return TrainOutcome(run_name, run_id, "", best_epoch, metrics, history)
    version = tracking.register(
        settings,
        run_id,
        MODEL_DIR,
        tags={"model": config.encoder.kind, "run_name": run_name, "best_epoch": str(best_epoch)},
    )
    tracking.set_tags(settings, run_id, {"registered_version": version})
    return TrainOutcome(run_name, run_id, version, best_epoch, metrics, history)

"""The driver of a training run: Ray Train, then test evaluation, MLflow artifacts and registry.

(The popularity baseline is ``training.popularity``; evaluating a registered version,
``training.version_eval``; job records, ``training.jobs``.)

``train`` pins the feature table versions, opens an MLflow run, writes the run's job to
its Ray Train storage folder (so ``--resume NAME`` repeats exactly the same job), and runs
``training.worker.train_worker`` on ``workers`` Ray Train workers. Ray Train restores the
latest checkpoint after a worker failure (FailureConfig) and when a run with the same
name is started again (``--resume``). Afterwards the driver takes the checkpoint with the
best validation metric, evaluates it on the test split, logs the model directory, a
training-curve PNG and the metrics, and registers a new version of the retrieval model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from features.reader import FeatureVersions, latest_versions, load_examples
from infra import ray_access
from infra.settings import Settings
from training import tracking
from training.config import TrainConfig
from training.errors import TrainingError
from training.evaluation import split_metrics, split_ranks
from training.jobs import read_job, write_job
from training.model_io import read_info, read_weights
from training.plots import plot_curves
from training.progress import EpochFollower
from training.retriever import Retriever
from training.worker import MODEL_DIR, TRAIN_STATE_FILE, TrainJob, train_worker

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
    log: Log = print,
) -> TrainOutcome:
    """Train ``config`` on Ray (or resume the run named ``resume``) and register the model."""
    import ray

    storage = settings.train_storage or str(settings.checkpoint_dir)
    workers = workers or settings.train_workers
    _connect(settings)
    _check_resources(settings, workers)
    if resume:
        job_record = read_job(storage, resume)
        config = TrainConfig.model_validate(job_record["config"])
        versions = FeatureVersions.from_dict(job_record["versions"])
        run_name, run_id, warm_start = resume, job_record["run_id"], job_record["warm_start"]
        log(f"resuming run {run_name} (MLflow run {run_id})")
    else:
        versions = latest_versions(settings)
        run_name = f"{config.encoder.kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    # Fetched before a new run is created, so a bad version fails without leaving a run behind.
    warm_state = _warm_start_state(settings, warm_start, log) if warm_start else None
    if not resume:
        run_id = tracking.start_run(
            settings,
            run_name,
            params=_params(config, versions, workers, warm_start),
            tags={"model": config.encoder.kind, "ray_run": run_name, "ray_storage": storage},
            feature_versions=versions.as_dict(),
        )
        write_job(storage, run_name, {"config": config.model_dump(mode="json"), "versions": versions.as_dict(),
                                      "run_id": run_id, "warm_start": warm_start})  # fmt: skip
    log(f"run {run_name}: {config.encoder.kind}, {workers} worker(s), features {versions.as_dict()}")
    job = TrainJob(
        settings=settings,
        config=config,
        versions=versions,
        run_id=run_id,
        use_gpu=settings.train_use_gpu,
        warm_start=ray.put(warm_state) if warm_state else None,
        fault_marker=str(settings.home / "train-faults" / run_name) if config.fail_once_after_epoch else None,
    )
    try:
        with EpochFollower(settings, run_id, config.epochs, log):
            result = _trainer(settings, job, workers, storage, run_name).fit()
    except ray.train.TrainingFailedError as error:
        tracking.client(settings).set_terminated(run_id, "FAILED")
        message = f"run {run_name} failed: {error}\ncontinue it with `streamrec train --resume {run_name}`"
        raise TrainingError(message, run_name) from error
    return _finish(settings, config, versions, run_name, run_id, result, log)


def _params(config: TrainConfig, versions: FeatureVersions, workers: int, warm_start: str | None) -> dict[str, str]:
    params = config.flat_params()
    params.update({f"version.{table}": str(version) for table, version in versions.as_dict().items()})
    params.update(workers=str(workers), warm_start=warm_start or "")
    return params


def _connect(settings: Settings) -> None:
    try:
        # Workers' output (Ray's, FBGEMM's, torch's) stays in Ray's worker logs; progress comes from MLflow.
        ray_access.connect(settings, log_to_driver=False)
    except ray_access.RayAccessError as error:
        raise TrainingError(str(error)) from error


def _check_resources(settings: Settings, workers: int) -> None:
    """Fail at once, with the remedy, when the cluster can never hold the worker group."""
    import ray

    offered = ray.cluster_resources()
    cpus = workers * settings.train_cpus_per_worker
    if offered.get("CPU", 0.0) < cpus:
        raise TrainingError(
            f"{workers} worker(s) x {settings.train_cpus_per_worker:g} CPU need {cpus:g} CPUs but the Ray cluster at "
            f"{settings.ray_address} offers {offered.get('CPU', 0.0):g}; use fewer --workers, lower "
            "STREAMREC_TRAIN_CPUS_PER_WORKER, or give Ray more CPUs (STREAMREC_RAY_NUM_CPUS)"
        )
    if settings.train_use_gpu and offered.get("GPU", 0.0) < workers:
        raise TrainingError(
            f"{workers} worker(s) need one GPU each but the Ray cluster offers {offered.get('GPU', 0.0):g}"
        )


def _trainer(settings: Settings, job: TrainJob, workers: int, storage: str, run_name: str) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    resources: dict[str, float] = {"CPU": settings.train_cpus_per_worker}
    if settings.train_use_gpu:
        resources["GPU"] = 1.0
    return TorchTrainer(
        train_worker,
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend="nccl" if settings.train_use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=settings.train_use_gpu, resources_per_worker=resources
        ),
        # ray.train re-exports the Train v2 RunConfig/FailureConfig at runtime (Ray 2.60's default),
        # which take logging_config and controller_failure_limit; mypy resolves the names to the
        # v1 ray.air.config classes, which do not.
        run_config=RunConfig(  # type: ignore[call-arg]
            name=run_name,
            storage_path=storage,
            # Worker failures restart from the last checkpoint; a worker group that cannot
            # start (no resources in time) fails the run instead of retrying forever.
            failure_config=FailureConfig(  # type: ignore[call-arg]
                max_failures=settings.train_max_failures, controller_failure_limit=0
            ),
            # The best checkpoint by the selection metric and the latest (for resuming) are kept.
            checkpoint_config=CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute=f"val_{job.config.selection_metric}",
                checkpoint_score_order="max",
            ),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def _warm_start_state(settings: Settings, version: str, log: Log) -> tuple[Any, dict[str, Any]]:
    """(ModelInfo, weights) of a registered model version, for the workers to start from."""
    with tracking.downloaded_version(settings, version) as directory:
        info = read_info(directory)
        weights = read_weights(directory)
    log(f"warm start from {settings.registered_model} version {version}: {info.num_items} items known")
    return info, weights


def _finish(
    settings: Settings,
    config: TrainConfig,
    versions: FeatureVersions,
    run_name: str,
    run_id: str,
    result: Any,
    log: Log,
) -> TrainOutcome:
    """Test the best checkpoint, log artifacts, register the model; the MLflow run ends
    FINISHED, or FAILED when any step fails, and no temporary directory stays behind."""
    try:
        with tempfile.TemporaryDirectory(prefix="streamrec-run-") as scratch:
            outcome = _evaluate_and_register(settings, config, versions, run_name, run_id, result, Path(scratch), log)
    except BaseException:
        tracking.client(settings).set_terminated(run_id, "FAILED")
        raise
    tracking.client(settings).set_terminated(run_id, "FINISHED")
    log(f"registered {settings.registered_model} version {outcome.model_version}")
    return outcome


def _evaluate_and_register(
    settings: Settings,
    config: TrainConfig,
    versions: FeatureVersions,
    run_name: str,
    run_id: str,
    result: Any,
    output: Path,
    log: Log,
) -> TrainOutcome:
    selection = f"val_{config.selection_metric}"
    best = result.get_best_checkpoint(selection, "max")
    if best is None or result.checkpoint is None:
        raise TrainingError(f"run {run_name} reported no checkpoint")
    with best.as_directory() as directory:
        shutil.copytree(Path(directory) / MODEL_DIR, output / MODEL_DIR)
    with result.checkpoint.as_directory() as directory:
        progress = _read_progress(Path(directory) / TRAIN_STATE_FILE)
    best_epoch = int(progress["best_epoch"])
    history = progress["history"]
    if len(history) < config.epochs:
        log(f"stopped early after epoch {len(history)}: no better {selection} for {config.patience} epochs")
    best_val = {f"best_{key}": value for key, value in history[best_epoch - 1].items() if key.startswith("val_")}

    log(f"evaluating the best epoch ({best_epoch}) on the test split")
    test = load_examples(settings, "test", versions, max_len=config.encoder.max_len)
    test_ranks = split_ranks(
        Retriever.from_directory(output / MODEL_DIR),
        test,
        batch_size=config.eval_batch_size,
        sampled=config.sampled_eval,
        negatives=config.eval_negatives,
        seed=config.seed,
    )
    metrics = {**best_val, **split_metrics(test_ranks, config.eval_ks, "test")}
    tracking.log_metrics(settings, run_id, {**metrics, "best_epoch": float(best_epoch)}, step=best_epoch)

    plot_curves(history, config.selection_metric, output / "training_curve.png")
    summary = {"best_epoch": best_epoch, "metrics": metrics, "history": history}
    (output / "metrics.json").write_text(json.dumps(summary, indent=2))
    tracking.log_artifacts(settings, run_id, output)
    version = tracking.register(
        settings,
        run_id,
        MODEL_DIR,
        tags={"model": config.encoder.kind, "run_name": run_name, "best_epoch": str(best_epoch)},
    )
    tracking.set_tags(settings, run_id, {"registered_version": version})
    return TrainOutcome(run_name, run_id, version, best_epoch, metrics, history)


def _read_progress(path: Path) -> dict[str, Any]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)["progress"]

"""The driver-side steps that retrieval runs (``training.retrieval.runner``) and ranking runs
(``training.ranking.runner``) share: connecting to Ray and checking its resources, the
TorchTrainer of a worker loop, fitting while the MLflow run's epochs are
followed, the best epoch's model, and ending the MLflow run FINISHED or FAILED.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra import ray_access
from infra.settings import Settings
from training.common import tracking
from training.common.config import DeviceChoice
from training.common.device import Device, process_group_backend, resolve_device
from training.common.errors import TrainingError
from training.common.worker_loop import MODEL_DIR, TRAIN_STATE_FILE, LoopConfig, LoopJob

Log = Callable[[str], None]

# Ray Train settings a run starts its controller with (Ray propagates these variables from the
# driver to the controller and its workers); a variable already set in the environment wins.
RAY_TRAIN_ENV = {
    # The controller collects reports and notices the end of training at its polls: Ray's
    # 2 s added 3-5 s to every run's end (tiny runs, 2 cores); a poll is one cheap call per worker.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # The preemption watcher is one more actor process per run, started as training starts (its
    # Python and Ray imports took CPU from the workers' first epochs); it only lets the controller
    # act on a node's drain notice before the node goes. Without it a lost node is a worker
    # failure, restarted from the last checkpoint (FailureConfig) as before.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


@dataclass(frozen=True)
class BestEpoch:
    """The epoch whose checkpoint a finished run keeps, and the whole run's history."""

    epoch: int
    history: list[dict[str, float]]

    def best_val(self) -> dict[str, float]:
        """The best epoch's validation metrics as ``best_val_*``."""
        return {f"best_{key}": value for key, value in self.history[self.epoch - 1].items() if key.startswith("val_")}


def connect(settings: Settings) -> None:
    """Connect the driver to the settings' Ray cluster; a failure is a TrainingError."""
    try:
        # Workers' output (Ray's, FBGEMM's, torch's) stays in Ray's worker logs; progress comes from MLflow.
        ray_access.connect(settings, log_to_driver=False)
    except ray_access.RayAccessError as error:
        raise TrainingError(str(error)) from error


def run_device(settings: Settings, choice: DeviceChoice, workers: int) -> Device:
    """The device ``workers`` Ray Train workers train on (``training.common.device.resolve_device``
    against the connected cluster's GPUs)."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0.0)
    return resolve_device(choice, use_gpu_setting=settings.train.use_gpu, gpus_offered=gpus, workers=workers)


def check_resources(settings: Settings, workers: int, *, use_gpu: bool) -> None:
    """Fail at once, with the remedy, when the cluster can never hold the worker group (one GPU
    per worker with ``use_gpu``)."""
    import ray

    offered = ray.cluster_resources()
    cpus = workers * settings.train.cpus_per_worker
    if offered.get("CPU", 0.0) < cpus:
        raise TrainingError(
            f"{workers} worker(s) x {settings.train.cpus_per_worker:g} CPU need {cpus:g} CPUs but the Ray cluster at "
            f"{settings.ray.address} offers {offered.get('CPU', 0.0):g}; use fewer --workers, lower "
            "STREAMREC_TRAIN_CPUS_PER_WORKER, or give Ray more CPUs (STREAMREC_RAY_NUM_CPUS)"
        )
    if use_gpu and offered.get("GPU", 0.0) < workers:
        raise TrainingError(
            f"{workers} worker(s) on cuda need one GPU each but the Ray cluster at {settings.ray.address} offers "
            f"{offered.get('GPU', 0.0):g}; use --device cpu, fewer --workers, or a cluster with GPUs"
        )


def torch_trainer(
    worker: Callable[[dict[str, Any]], None], job: LoopJob, *, workers: int, storage: str, run_name: str
) -> Any:
    """A TorchTrainer running ``worker({"job": job})`` on ``workers`` workers, each with one GPU
    and NCCL when ``job.use_gpu``, else gloo on CPUs; it keeps the best checkpoint by the
    config's selection metric and the latest."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    settings = job.settings
    device: Device = "cuda" if job.use_gpu else "cpu"
    resources: dict[str, float] = {"CPU": settings.train.cpus_per_worker}
    if job.use_gpu:
        resources["GPU"] = 1.0
    return TorchTrainer(
        # The job is bound to the entry point, not passed as train_loop_config: Ray Train hands
        # train_loop_config to its controller actor, whose start unpickled the job and so imported
        # the worker module (torchrec, FBGEMM, deltalake, mlflow): the controller's start took 6.4 s
        # instead of 11.6 (medians, 2 cores, benchmarks/results/train_fixed_cost.json). The entry
        # point goes through the object store to the workers only, which import those modules anyway.
        functools.partial(worker, {"job": job}),
        torch_config=TorchConfig(backend=process_group_backend(device)),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=job.use_gpu, resources_per_worker=resources),
        # ray.train re-exports the Train v2 RunConfig/FailureConfig at runtime (Ray 2.60's default),
        # which take logging_config and controller_failure_limit; mypy resolves the names to the
        # v1 ray.air.config classes, which do not.
        run_config=RunConfig(  # type: ignore[call-arg]
            name=run_name,
            storage_path=storage,
            # Worker failures restart from the last checkpoint; a worker group that cannot
            # start (no resources in time) fails the run instead of retrying forever.
            failure_config=FailureConfig(  # type: ignore[call-arg]
                max_failures=settings.train.max_failures, controller_failure_limit=0
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


def fit(
    worker: Callable[[dict[str, Any]], None],
    job: LoopJob,
    *,
    workers: int,
    storage: str,
    run_name: str,
    follower: AbstractContextManager[Any],
    what: str,
    hint: str = "",
) -> Any:
    """Fit ``torch_trainer(worker, job, ...)`` while ``follower`` shows the epochs; when training
    fails the MLflow run ends FAILED and a TrainingError says "``what`` failed: <why>``hint``"."""
    import ray

    trainer = torch_trainer(worker, job, workers=workers, storage=storage, run_name=run_name)
    try:
        with follower, ray_train_env():
            return trainer.fit()
    except ray.train.TrainingFailedError as error:
        tracking.client(job.settings).set_terminated(job.run_id, "FAILED")
        raise TrainingError(f"{what} failed: {error}{hint}", run_name) from error


@contextmanager
def ray_train_env() -> Iterator[None]:
    """``RAY_TRAIN_ENV`` in the environment while a trainer starts its controller, then as before."""
    added = {key: value for key, value in RAY_TRAIN_ENV.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextmanager
def finishing(settings: Settings, run_id: str, prefix: str) -> Iterator[Path]:
    """A scratch directory for a run's last steps; afterwards the MLflow run ends FINISHED, or
    FAILED when any step fails, and no temporary directory stays behind."""
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
            yield Path(scratch)
    except BaseException:
        tracking.client(settings).set_terminated(run_id, "FAILED")
        raise
    tracking.client(settings).set_terminated(run_id, "FINISHED")


def best_epoch(result: Any, config: LoopConfig, output: Path, what: str, log: Log) -> BestEpoch:
    """Copy the model of the best checkpoint by the config's selection metric to ``output /
    MODEL_DIR``; the best epoch and the history from the latest checkpoint (``what`` names the run)."""
    selection = f"val_{config.selection_metric}"
    best = result.get_best_checkpoint(selection, "max")
    if best is None or result.checkpoint is None:
        raise TrainingError(f"{what} reported no checkpoint")
    with best.as_directory() as directory:
        shutil.copytree(Path(directory) / MODEL_DIR, output / MODEL_DIR)
    with result.checkpoint.as_directory() as directory:
        import torch

        progress = torch.load(Path(directory) / TRAIN_STATE_FILE, map_location="cpu", weights_only=False)["progress"]
    history = progress["history"]
    if len(history) < config.epochs:
        log(f"stopped early after epoch {len(history)}: no better {selection} for {progress['stale_epochs']} epochs")
    return BestEpoch(int(progress["best_epoch"]), history)

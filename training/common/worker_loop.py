"""The parts of a Ray Train worker that retrieval (``training.retrieval.worker``) and ranking
(``training.ranking.worker``) share: the epoch loop with early stopping, reports and MLflow
metrics, and the checkpoints (the exported model plus optimizer states, gathered on rank 0)
that a restarted worker group or a resumed run continues from.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import ray.train
import torch
import torch.distributed as dist
from torchrec.distributed import DistributedModelParallel

from features.rows import PaddedRows
from infra.settings import Settings
from training.common.sharded_table import sharded_weights
from training.common.sharding import gather_state, load_state, table_optimizer_state
from training.common.tracking import log_metrics

TRAIN_STATE_FILE = "train_state.pt"
MODEL_DIR = "model"
Rows = TypeVar("Rows", bound=PaddedRows)  # SequenceExamples or RankingExamples


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0
    best_epoch: int = 0
    best_value: float = float("-inf")
    stale_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def record(self, epoch: int, metrics: dict[str, float], selection_key: str) -> None:
        self.epoch = epoch
        self.history.append(metrics)
        if metrics[selection_key] > self.best_value:
            self.best_epoch, self.best_value, self.stale_epochs = epoch, metrics[selection_key], 0
        else:
            self.stale_epochs += 1

    def exhausted(self, patience: int, patience_fraction: float = 0.0) -> bool:
        """Whether early stopping ends the run now: ``max(patience, patience_fraction x best
        epoch)`` epochs without a better selection metric (``patience`` 0 = never)."""
        return bool(patience) and self.stale_epochs >= max(patience, math.ceil(patience_fraction * self.best_epoch))


class LoopConfig(Protocol):
    """The fields of a TrainConfig or RankingTrainConfig the epoch loop reads."""

    @property
    def epochs(self) -> int: ...
    @property
    def patience(self) -> int: ...  # stop after this many epochs without a better selection metric; 0 = never
    @property
    def seed(self) -> int: ...
    @property
    def selection_metric(self) -> str: ...  # the validation metric (without "val_") that selects the best epoch


class LoopJob(Protocol):
    """A TrainJob or RankingJob: the run's settings, MLflow run and config."""

    @property
    def settings(self) -> Settings: ...
    @property
    def run_id(self) -> str: ...
    @property
    def config(self) -> LoopConfig: ...
    @property
    def use_gpu(self) -> bool: ...  # the run's resolved device is cuda: one GPU per worker, NCCL


def quiet_libraries() -> None:
    """Keep the driver's console to progress and results: FBGEMM's info logs (to the root
    logger) and known deprecation notices of torchrec's internals are dropped."""
    logging.getLogger().setLevel(logging.WARNING)
    for message in (
        "Please use DTensor instead",
        "`broadcast_buffers` is deprecated",
        "is_fx_tracing will return true",
    ):
        warnings.filterwarnings("ignore", message=f".*{message}.*")


def run_epochs(
    job: LoopJob,
    progress: Progress,
    train: Rows,
    train_epoch: Callable[[Rows, int], float],
    validate: Callable[[], dict[str, float]],
    checkpoint: Callable[[Progress], ray.train.Checkpoint | None],
    *,
    rate_name: str,
    before_epoch: Callable[[int], None] | None = None,
    patience_fraction: float = 0.0,
) -> None:
    """Epochs after ``progress.epoch`` until ``config.epochs`` or early stopping: this worker's
    shard of ``train`` (reshuffled every epoch) to ``train_epoch(shard, epoch)`` (the mean loss),
    ``validate()``, one report with ``checkpoint(progress)`` from every worker; rank 0 logs the
    epoch's metrics (throughput as ``rate_name``) to MLflow, where the driver follows them.
    Early stopping: ``Progress.exhausted(config.patience, patience_fraction)``."""
    config = job.config
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if rank == 0 and progress.epoch:
        log_metrics(job.settings, job.run_id, {"resumed_from_epoch": float(progress.epoch)}, step=progress.epoch)
    for epoch in range(progress.epoch + 1, config.epochs + 1):
        if progress.exhausted(config.patience, patience_fraction):
            break
        if before_epoch is not None:
            before_epoch(epoch)
        started = time.perf_counter()
        shard = train.shard(rank, world, seed=config.seed, epoch=epoch, shuffle=True)
        loss = train_epoch(shard, epoch)
        seconds = time.perf_counter() - started
        val_metrics = validate()
        metrics = {
            "epoch": float(epoch),
            "train_loss": loss,
            "train_seconds": seconds,
            rate_name: len(train) / seconds,
            **val_metrics,
        }
        progress.record(epoch, metrics, f"val_{config.selection_metric}")
        # Ray Train copies the checkpoint to the run's storage; the staging directory goes after.
        ray.train.report(metrics, checkpoint=checkpoint(progress), delete_local_checkpoint_after_upload=True)
        if rank == 0:
            log_metrics(job.settings, job.run_id, {k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)


def epoch_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """The negative-sampling generator of one worker in one epoch (distinct per rank and epoch)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]))


def mean_over_workers(total: torch.Tensor, device: torch.device) -> float:
    """Mean loss of all workers from each worker's (loss sum, steps) tensor (a collective, on
    ``device``: NCCL reduces GPU tensors only)."""
    total = total.to(device)
    dist.all_reduce(total)
    loss_sum, steps = total.tolist()
    return loss_sum / max(steps, 1.0)


def write_checkpoint(
    dmp: DistributedModelParallel,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
    save_model: Callable[[Path, dict[str, torch.Tensor]], None],
    prefix: str,
) -> ray.train.Checkpoint | None:
    """Gather the model and optimizer states on rank 0 and write them to a checkpoint there:
    ``save_model(MODEL_DIR, gathered weights)`` exports the model, TRAIN_STATE_FILE the rest."""
    weights = gather_state(dmp.state_dict())
    table_state = gather_state(table_optimizer_state(dmp))
    if weights is None:
        return None
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    save_model(directory / MODEL_DIR, weights)
    state = {"progress": asdict(progress), "dense_optimizer": optimizer.state_dict(), "table_optimizer": table_state}
    torch.save(state, directory / TRAIN_STATE_FILE)
    return ray.train.Checkpoint.from_directory(directory)


def restore_checkpoint(
    dmp: DistributedModelParallel,
    optimizer: torch.optim.Optimizer,
    read_weights: Callable[[Path], dict[str, torch.Tensor]],
) -> Progress | None:
    """Load Ray Train's latest checkpoint (``read_weights`` reads its exported model) into the
    model and both optimizers; its progress, or None when there is no checkpoint."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        weights = sharded_weights(read_weights(Path(directory) / MODEL_DIR))
        state = torch.load(Path(directory) / TRAIN_STATE_FILE, map_location="cpu", weights_only=False)
    load_exactly(dmp.state_dict(), weights)
    load_exactly(table_optimizer_state(dmp), state["table_optimizer"])
    optimizer.load_state_dict(state["dense_optimizer"])
    return Progress(**state["progress"])


def load_exactly(tensors: dict[str, Any], full: dict[str, torch.Tensor]) -> None:
    """Load ``full`` into ``tensors`` (``training.common.sharding.load_state``); every tensor must be there."""
    missing = load_state(tensors, full)
    if missing:
        raise ValueError(f"checkpoint lacks {missing}")

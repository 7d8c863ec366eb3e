"""The Ray Train worker loop: every worker trains its shard of the examples with DMP.

Per epoch each worker takes an equal, disjoint shard of the train split (reshuffled every
epoch), trains it batch by batch (the item table is sharded across workers, the encoder
is replicated and synchronised by DDP), evaluates its shard of the validation split
against the full catalogue, and all workers report one checkpoint: the exported model
plus the optimizer states, gathered on rank 0 (see ``training.sharding``). Rank 0 logs
the epoch's metrics to the MLflow run the driver opened.

Workers print nothing: their output (and Ray's) stays in Ray's worker logs; the driver
shows one line per epoch from the metrics rank 0 logs to MLflow (``training.progress``).

A worker restarted by Ray Train (FailureConfig) or a ``--resume``d run finds the last
checkpoint through ``ray.train.get_checkpoint()`` and continues with the next epoch.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torchrec.distributed import DistributedModelParallel

from features.examples import SequenceExamples
from features.reader import FeatureVersions, load_examples
from infra.settings import Settings
from training.config import TrainConfig
from training.evaluation import SplitRanks, split_metrics, split_ranks
from training.loss import retrieval_loss
from training.model_io import ModelInfo, read_weights, save_model
from training.retriever import Retriever
from training.sharded_model import ShardedRetrievalModel, lookup_input, plain_weights, sharded_weights
from training.sharding import catalog_embeddings, dense_optimizer, gather_state, load_state, shard_model
from training.tracking import log_metrics

TRAIN_STATE_FILE = "train_state.pt"
MODEL_DIR = "model"
FAULT_DELAY_S = 6.0


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs; Ray workers do not see the driver's environment."""

    settings: Settings
    config: TrainConfig
    versions: FeatureVersions
    run_id: str
    use_gpu: bool = False
    warm_start: Any = None  # ray.ObjectRef of (ModelInfo, weights) of a model to start from
    fault_marker: str | None = None  # fault injection: file created by the one injected exit


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


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point (``train_loop_per_worker``); ``loop_config["job"]`` is a TrainJob."""
    job: TrainJob = loop_config["job"]
    config, encoder = job.config, job.config.encoder
    _quiet_libraries()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config.seed)

    train = load_examples(job.settings, "train", job.versions, max_len=encoder.max_len)
    val = load_examples(job.settings, "validation", job.versions, max_len=encoder.max_len)
    num_items = train.num_items
    model = ShardedRetrievalModel(encoder, num_items, table_device=torch.device("meta"))
    dmp = shard_model(model, config, device, context.get_local_world_size())
    optimizer = dense_optimizer(dmp, config)
    progress = _restore(dmp, optimizer, job, num_items)
    info = ModelInfo(encoder=encoder, num_items=num_items, feature_versions=job.versions.as_dict())
    if rank == 0 and progress.epoch:
        log_metrics(job.settings, job.run_id, {"resumed_from_epoch": float(progress.epoch)}, step=progress.epoch)

    val_shard = val.shard(rank, world)
    for epoch in range(progress.epoch + 1, config.epochs + 1):
        if config.patience and progress.stale_epochs >= config.patience:
            break
        _maybe_inject_fault(job, epoch - 1, rank, world)
        started = time.perf_counter()
        shard = train.shard(rank, world, seed=config.seed, epoch=epoch, shuffle=True)
        loss = _train_epoch(dmp, optimizer, shard, job, epoch, rank, device)
        seconds = time.perf_counter() - started
        val_metrics = _evaluate(dmp, val_shard, config, num_items, rank)
        metrics = {
            "epoch": float(epoch),
            "train_loss": loss,
            "train_seconds": seconds,
            "train_sequences_per_s": len(train) / seconds,
            **val_metrics,
        }
        progress.record(epoch, metrics, f"val_{config.selection_metric}")
        ray.train.report(metrics, checkpoint=_checkpoint(dmp, optimizer, progress, info))
        if rank == 0:  # the driver follows the run's progress through these MLflow metrics
            log_metrics(job.settings, job.run_id, {k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)


def _quiet_libraries() -> None:
    """Keep the driver's console to progress and results: FBGEMM's info logs (to the root
    logger) and known deprecation notices of torchrec's internals are dropped."""
    logging.getLogger().setLevel(logging.WARNING)
    for message in (
        "Please use DTensor instead",
        "`broadcast_buffers` is deprecated",
        "is_fx_tracing will return true",
    ):
        warnings.filterwarnings("ignore", message=f".*{message}.*")


def _train_epoch(
    dmp: DistributedModelParallel,
    optimizer: torch.optim.Optimizer,
    shard: SequenceExamples,
    job: TrainJob,
    epoch: int,
    rank: int,
    device: torch.device,
) -> float:
    """One pass over this worker's shard; returns the mean loss over all workers."""
    config = job.config
    num_items = dmp.module.num_items
    seed = int(np.random.SeedSequence([config.seed, epoch, rank]).generate_state(1)[0])
    generator = torch.Generator().manual_seed(seed)
    batches = shard.batches(
        config.batch_size, seed=config.seed, epoch=epoch, shuffle=True, by_length=config.length_bucketing
    )
    dmp.train()
    total = torch.zeros(2, dtype=torch.float64)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=job.use_gpu)
    for batch in batches:
        length = max(int(batch["lengths"].max()), 1)
        batch = {key: value.to(device) for key, value in batch.items()}
        negatives = torch.randint(1, num_items + 1, (config.num_negatives,), generator=generator).to(device)
        lookups = lookup_input(batch["item_indices"][:, :length], batch["lengths"], negatives)
        with autocast:
            hidden, history_emb, negative_emb = dmp(
                lookups, batch["action_ids"][:, :length], batch["timestamps"][:, :length], batch["lengths"]
            )
        terms = retrieval_loss(
            hidden, history_emb, batch, negatives, negative_emb, generator=generator, **config.loss_options()
        )
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        total += torch.tensor([terms.total.item(), 1.0], dtype=torch.float64)
    dist.all_reduce(total)
    loss_sum, steps = total.tolist()
    return loss_sum / max(steps, 1.0)


def _evaluate(
    dmp: DistributedModelParallel,
    shard: SequenceExamples,
    config: TrainConfig,
    num_items: int,
    rank: int,
) -> dict[str, float]:
    """Validation metrics (both protocols) of the whole split, identical on every worker."""
    dmp.eval()
    table = catalog_embeddings(dmp, num_items + 1)[:, : config.encoder.dim]
    retriever = Retriever(dmp.module.encoder, table)
    ranks = split_ranks(
        retriever,
        shard,
        batch_size=config.eval_batch_size,
        sampled=config.sampled_eval,
        negatives=config.eval_negatives,
        seed=config.seed + rank,
    )
    everyone: list[SplitRanks | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, ranks)
    dmp.train()
    return split_metrics(SplitRanks.concatenate([r for r in everyone if r is not None]), config.eval_ks, "val")


def table_optimizer_state(dmp: DistributedModelParallel) -> dict[str, Any]:
    """The fused optimizer's state of the sharded table, flattened to {param/state: tensor}."""
    state = dmp.fused_optimizer.state_dict()["state"]
    return {f"{param}/{name}": value for param, values in state.items() for name, value in values.items()}


def _checkpoint(
    dmp: DistributedModelParallel, optimizer: torch.optim.Optimizer, progress: Progress, info: ModelInfo
) -> ray.train.Checkpoint | None:
    """Gather the model and optimizer states on rank 0 and write them to a checkpoint there."""
    weights = gather_state(dmp.state_dict())
    table_state = gather_state(table_optimizer_state(dmp))
    if weights is None:
        return None
    directory = Path(tempfile.mkdtemp(prefix="streamrec-checkpoint-"))
    save_model(directory / MODEL_DIR, info, plain_weights(weights, info.encoder.dim))
    state = {"progress": asdict(progress), "dense_optimizer": optimizer.state_dict(), "table_optimizer": table_state}
    torch.save(state, directory / TRAIN_STATE_FILE)
    return ray.train.Checkpoint.from_directory(directory)


def _restore(
    dmp: DistributedModelParallel, optimizer: torch.optim.Optimizer, job: TrainJob, num_items: int
) -> Progress:
    """Continue from Ray Train's latest checkpoint, else warm-start from a model, else start fresh."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            weights = sharded_weights(read_weights(Path(directory) / MODEL_DIR))
            state = torch.load(Path(directory) / TRAIN_STATE_FILE, map_location="cpu", weights_only=False)
        _load_exactly(dmp.state_dict(), weights)
        _load_exactly(table_optimizer_state(dmp), state["table_optimizer"])
        optimizer.load_state_dict(state["dense_optimizer"])
        return Progress(**state["progress"])
    if job.warm_start is not None:
        info, weights = ray.get(job.warm_start)
        if info.encoder != job.config.encoder:
            raise ValueError(f"warm start needs the same encoder config as the model it starts from: {info.encoder}")
        if info.num_items > num_items:
            raise ValueError(f"the model knows {info.num_items} items but the vocabulary read has only {num_items}")
        _load_exactly(dmp.state_dict(), sharded_weights(weights))
    return Progress()


def _load_exactly(tensors: dict[str, Any], full: dict[str, torch.Tensor]) -> None:
    missing = load_state(tensors, full)
    if missing:
        raise ValueError(f"checkpoint lacks {missing}")


def _maybe_inject_fault(job: TrainJob, finished_epoch: int, rank: int, world: int) -> None:
    """Fault injection for tests of recovery: the last worker dies once, in the epoch after
    ``fail_once_after_epoch``, as a crash a few seconds into an epoch would.

    It first waits FAULT_DELAY_S, longer than the Ray Train controller takes to collect the
    previous report (it polls workers every 2 s), so that checkpoint is registered.
    """
    if job.config.fail_once_after_epoch != finished_epoch or rank != world - 1 or job.fault_marker is None:
        return
    marker = Path(job.fault_marker)
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"worker {rank} exited after epoch {finished_epoch}\n")
    time.sleep(FAULT_DELAY_S)
    print(f"fault injection: worker {rank} exits during epoch {finished_epoch + 1}", flush=True)
    os._exit(1)

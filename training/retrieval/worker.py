"""The Ray Train worker loop: every worker trains its shard of the examples with DMP.

Per epoch each worker takes an equal, disjoint shard of the train split (reshuffled every
epoch), trains it batch by batch (the item table is sharded across workers, the encoder
is replicated and synchronised by DDP), evaluates its shard of the validation split
against the full catalogue, and all workers report one checkpoint: the exported model
plus the optimizer states, gathered on rank 0 (see ``training.common.sharding``). Rank 0 logs
the epoch's metrics to the MLflow run the driver opened.

Workers print nothing: their output (and Ray's) stays in Ray's worker logs; the driver
shows one line per epoch from the metrics rank 0 logs to MLflow (``training.common.progress``).

A worker restarted by Ray Train (FailureConfig) or a ``--resume``d run finds the last
checkpoint through ``ray.train.get_checkpoint()`` and continues with the next epoch. The
epoch loop and the checkpoints are those of ranking too (``training.common.worker_loop``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torchrec.distributed import DistributedModelParallel

from features.examples import SequenceExamples
from features.reader import FeatureVersions, load_examples
from features.subsample import subsample_users
from infra.settings import Settings
from training.common import tracking
from training.common.bert4rec import mask_action_ids, mask_positions
from training.common.device import Device, autocast, resolve_precision
from training.common.loss import check_full_loss_fits, retrieval_loss
from training.common.sharded_table import lookup_input, plain_weights, sharded_weights, table_width
from training.common.sharding import catalog_embeddings, dense_optimizer, set_table_lr, shard_model
from training.common.worker_loop import (
    Progress,
    epoch_generator,
    load_exactly,
    mean_over_workers,
    quiet_libraries,
    restore_checkpoint,
    run_epochs,
    write_checkpoint,
)
from training.retrieval.config import TrainConfig
from training.retrieval.evaluation import SplitRanks, split_metrics, split_ranks
from training.retrieval.io import ModelInfo, read_weights, save_model
from training.retrieval.retriever import Retriever
from training.retrieval.sharded_model import ShardedRetrievalModel

FAULT_DELAY_S = 6.0


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs; Ray workers do not see the driver's environment."""

    settings: Settings
    config: TrainConfig
    versions: FeatureVersions
    run_id: str
    use_gpu: bool = False  # the run's device (``TrainConfig.device``, resolved on the driver) is cuda
    warm_start: Any = None  # ray.ObjectRef of (ModelInfo, weights) of a model to start from
    fault_marker: str | None = None  # fault injection: file created by the one injected exit


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point (``train_loop_per_worker``); ``loop_config["job"]`` is a TrainJob."""
    job: TrainJob = loop_config["job"]
    config, encoder = job.config, job.config.encoder
    quiet_libraries()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type != ("cuda" if job.use_gpu else "cpu"):
        raise RuntimeError(f"the run trains on {'cuda' if job.use_gpu else 'cpu'} but Ray Train gave {device}")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's object collectives use the current device
    torch.manual_seed(config.seed)

    train = subsample_users(
        load_examples(job.settings, "train", job.versions, max_len=encoder.max_len), config.data_fraction
    )
    val = load_examples(job.settings, "validation", job.versions, max_len=encoder.max_len)
    num_items = train.num_items
    loss = config.resolved_loss(num_items)
    if loss == "full":
        available = torch.cuda.mem_get_info()[0] if job.use_gpu else psutil.virtual_memory().available
        check_full_loss_fits(
            config.batch_size * encoder.max_len, num_items, table_width(encoder.dim), config.loss_chunk_items, available
        )
    if rank == 0:
        tracking.client(job.settings).log_param(job.run_id, "resolved_loss", loss)
    model = ShardedRetrievalModel(encoder, num_items, table_device=torch.device("meta"))
    dmp = shard_model(
        model,
        config.table,
        device,
        context.get_local_world_size(),
        dense_lr=config.lr,
        betas=config.betas,
        seed=config.seed,
    )
    optimizer = dense_optimizer(dmp, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    progress = _restore(dmp, optimizer, job, num_items)
    info = ModelInfo(encoder=encoder, num_items=num_items, feature_versions=job.versions.as_dict())
    val_shard = validation_sample(val, config.val_users, config.seed).shard(rank, world)
    run_epochs(
        job,
        progress,
        train,
        lambda shard, epoch: _train_epoch(dmp, optimizer, shard, job, epoch, rank, device),
        lambda: _evaluate(dmp, val_shard, config, num_items, rank),
        lambda state: _checkpoint(dmp, optimizer, state, info, job.run_id),
        rate_name="train_sequences_per_s",
        before_epoch=lambda epoch: _maybe_inject_fault(job, epoch - 1, rank, world),
        patience_fraction=config.patience_fraction,
    )


def validation_sample(val: SequenceExamples, users: int, seed: int) -> SequenceExamples:
    """The fixed validation rows of every epoch: ``users`` rows drawn once from ``seed`` (in
    their order), or all rows when ``users`` is 0 or not fewer than the split's."""
    if not users or users >= len(val):
        return val
    rows = np.sort(np.random.default_rng([seed, 1]).choice(len(val), size=users, replace=False))
    return val.take(rows)


def _train_epoch(
    dmp: DistributedModelParallel,
    optimizer: torch.optim.Optimizer,
    shard: SequenceExamples,
    job: TrainJob,
    epoch: int,
    rank: int,
    device: torch.device,
) -> float:
    """One pass over this worker's shard; returns the mean loss over all workers. With the
    masked-item objective each batch's histories get freshly drawn mask tokens."""
    config, encoder = job.config, job.config.encoder
    masked_item = encoder.training_objective == "masked_item"
    num_items = dmp.module.num_items
    generator = epoch_generator(config.seed, epoch, rank)
    batches = shard.batches(
        config.batch_size, seed=config.seed, epoch=epoch, shuffle=True, by_length=config.length_bucketing
    )
    dmp.train()
    total = torch.zeros(2, dtype=torch.float64)
    kind: Device = "cuda" if job.use_gpu else "cpu"
    precision = resolve_precision(config.precision, kind)
    options = config.loss_options(num_items)
    catalogue = torch.arange(1, num_items + 1, device=device)  # the full loss's candidates: every item
    steps = -(-len(shard) // config.batch_size)
    dense_lr, table_lr = config.lr, config.table_optimizer(job.use_gpu)[1]
    for step, batch in enumerate(batches, start=(epoch - 1) * steps):
        if config.lr_schedule != "constant" or config.warmup_epochs:
            factor = config.lr_factor(step, steps)
            for group in optimizer.param_groups:
                group["lr"] = dense_lr * factor
            set_table_lr(dmp, table_lr * factor)
        length = max(int(batch["lengths"].max()), 1)
        batch = {key: value.to(device) for key, value in batch.items()}
        if options["kind"] == "full":
            candidates = catalogue
        else:
            candidates = torch.randint(1, num_items + 1, (config.num_negatives,), generator=generator).to(device)
        # The masked items are looked up too: their rows are the targets, the encoder reads the mask token.
        lookups = lookup_input(batch["item_indices"][:, :length], batch["lengths"], candidates)
        action_ids, masked = batch["action_ids"][:, :length], None
        if masked_item:
            draw = mask_positions(batch["lengths"].cpu(), length, encoder.mask_prob, encoder.max_len, generator)
            masked = draw.to(device)
            action_ids = mask_action_ids(action_ids, masked)
        with autocast(kind, precision):
            hidden, history_emb, candidate_emb = dmp(
                lookups, action_ids, batch["timestamps"][:, :length], batch["lengths"]
            )
        terms = retrieval_loss(
            hidden.float(),  # the loss in float32 whatever the forward's precision
            history_emb,
            batch,
            candidates,
            candidate_emb,
            generator=generator,
            masked=masked,
            prefix_dims=encoder.matryoshka_dims,
            **options,
        )
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        total += torch.tensor([terms.total.item(), 1.0], dtype=torch.float64)
    return mean_over_workers(total, device)


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
    ranks = split_ranks(retriever, shard, seed=config.seed + rank, **config.eval_options())
    everyone: list[SplitRanks | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, ranks)
    dmp.train()
    return split_metrics(SplitRanks.concatenate([r for r in everyone if r is not None]), config.eval_ks, "val")


def _checkpoint(
    dmp: DistributedModelParallel, optimizer: torch.optim.Optimizer, progress: Progress, info: ModelInfo, run_id: str
) -> ray.train.Checkpoint | None:
    """The epoch's checkpoint: the exported retrieval model and the optimizer states."""

    def save(directory: Path, weights: dict[str, torch.Tensor]) -> None:
        save_model(directory, info, plain_weights(weights, info.encoder.dim))

    return write_checkpoint(dmp, optimizer, progress, save, f"streamrec-checkpoint-{run_id}-")


def _restore(
    dmp: DistributedModelParallel, optimizer: torch.optim.Optimizer, job: TrainJob, num_items: int
) -> Progress:
    """Continue from Ray Train's latest checkpoint, else warm-start from a model, else start fresh."""
    progress = restore_checkpoint(dmp, optimizer, read_weights)
    if progress is not None:
        return progress
    if job.warm_start is not None:
        info, weights = ray.get(job.warm_start)
        if info.encoder != job.config.encoder:
            raise ValueError(f"warm start needs the same encoder config as the model it starts from: {info.encoder}")
        if info.num_items > num_items:
            raise ValueError(f"the model knows {info.num_items} items but the vocabulary read has only {num_items}")
        load_exactly(dmp.state_dict(), sharded_weights(weights))
    return Progress()


def _maybe_inject_fault(job: TrainJob, finished_epoch: int, rank: int, world: int) -> None:
    """Fault injection for tests of recovery: the last worker dies once, in the epoch after
    ``fail_once_after_epoch``, as a crash a few seconds into an epoch would.

    It first waits FAULT_DELAY_S, longer than the Ray Train controller takes to collect the
    previous report (it polls workers every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, 0.5 s as
    ``training.common.driver`` starts it, Ray's default 2 s), so that checkpoint is registered.
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

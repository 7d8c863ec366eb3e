"""The Ray Train worker loop of ranking: every worker trains its shard of the examples with DMP.

As retrieval (``training.retrieval.worker``): per epoch each worker takes an equal, disjoint shard of the
train split (reshuffled every epoch); the item table is sharded row-wise across workers
(``training.common.sharding.shard_model``, fused optimizer in backward), the tower is replicated and
synchronised by DDP. The loss is the weighted sum of each task's mean BCE. Then each worker
scores its shard of the validation split, the predictions are all-gathered, and every worker
computes the same metrics (``training.ranking.metrics``); all report one checkpoint (the
exported ranker plus optimizer states, gathered on rank 0), and rank 0 logs the epoch's metrics
to the MLflow run the driver opened. A restarted worker group resumes from the last checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torchrec.distributed import DistributedModelParallel

from features.ranking_reader import RankingExamples, RankingVersions, load_ranking_examples
from infra.settings import Settings
from ingestion.schema import ACTION_IDS
from training.common.device import Device, autocast, resolve_precision
from training.common.loss import retrieval_loss
from training.common.model import PLAIN_WEIGHT
from training.common.sharded_table import lookup_input, plain_weights, sharded_weights
from training.common.sharding import dense_optimizer, load_state, shard_model
from training.common.worker_loop import (
    Progress,
    epoch_generator,
    mean_over_workers,
    quiet_libraries,
    restore_checkpoint,
    run_epochs,
    write_checkpoint,
)
from training.ranking.config import RankingTrainConfig
from training.ranking.evaluation import Predictions, evaluate
from training.ranking.io import RankingInfo, read_ranking_weights, save_ranking_model
from training.ranking.model import ranking_loss
from training.ranking.sharded_model import ShardedRankingModel
from training.retrieval.io import ModelInfo


@dataclass(frozen=True)
class RankingJob:
    """Everything a ranking worker needs (Ray workers do not see the driver's environment)."""

    settings: Settings
    config: RankingTrainConfig
    versions: RankingVersions
    run_id: str
    use_gpu: bool = False
    warm_start: Any = None  # ray.ObjectRef of (ModelInfo, weights) of a retrieval model to start from


def ranking_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point (``train_loop_per_worker``); ``loop_config["job"]`` is a RankingJob."""
    job: RankingJob = loop_config["job"]
    config = job.config
    quiet_libraries()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config.seed)

    max_len = config.model.encoder.max_len
    train = load_ranking_examples(job.settings, "train", job.versions, max_len=max_len)
    val = load_ranking_examples(job.settings, "validation", job.versions, max_len=max_len)
    num_items = train.num_items
    model = ShardedRankingModel(config.model, num_items, table_device=torch.device("meta"))
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
    info = RankingInfo(config.model, num_items, job.versions.as_dict(), train.window_ms)
    weights = torch.tensor(config.weights(), device=device)
    val_shard = val.shard(rank, world)
    run_epochs(
        job,
        progress,
        train,
        lambda shard, epoch: _train_epoch(dmp, optimizer, shard, job, epoch, weights, device),
        lambda: evaluate_sharded(dmp, val_shard, config, device, "val"),
        lambda state: _checkpoint(dmp, optimizer, state, info, job.run_id),
        rate_name="train_examples_per_s",
    )


def _forward(
    dmp: DistributedModelParallel, batch: dict[str, torch.Tensor], extra: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sharded model on a batch; ``extra`` item ids are looked up too (next-item negatives)."""
    length = max(int(batch["lengths"].max()), 1)
    candidates = batch["candidates"] if extra is None else torch.cat([batch["candidates"], extra])
    lookups = lookup_input(batch["item_indices"][:, :length], batch["lengths"], candidates)
    return dmp(
        lookups,
        batch["item_indices"][:, :length],
        batch["candidates"],
        batch["action_ids"][:, :length],
        batch["timestamps"][:, :length],
        batch["lengths"],
        batch["ts"],
    )


def _train_epoch(
    dmp: DistributedModelParallel,
    optimizer: torch.optim.Optimizer,
    shard: RankingExamples,
    job: RankingJob,
    epoch: int,
    weights: torch.Tensor,
    device: torch.device,
) -> float:
    """One pass over this worker's shard; returns the mean loss over all workers."""
    config = job.config
    dmp.train()
    total = torch.zeros(2, dtype=torch.float64)
    kind: Device = "cuda" if job.use_gpu else "cpu"
    generator = epoch_generator(config.seed, epoch, dist.get_rank())
    next_item = config.uses_next_item_loss()
    num_items = dmp.module.num_items
    for batch in shard.batches(config.batch_size, seed=config.seed, epoch=epoch, shuffle=True):
        batch = {key: value.to(device) for key, value in batch.items()}
        negatives = None
        if next_item:
            negatives = torch.randint(1, num_items + 1, (config.num_negatives,), generator=generator).to(device)
        with autocast(kind, resolve_precision("auto", kind)):
            logits, hidden, history_emb, negative_emb = _forward(dmp, batch, negatives)
        loss = ranking_loss(logits, batch["labels"], weights, batch["valid"])
        if negatives is not None:
            terms = retrieval_loss(
                hidden, history_emb, next_item_targets(batch), negatives, negative_emb, generator=generator,
                temperature=config.temperature, in_batch_negatives=config.in_batch_negatives, ntr_weight=0.0,
                scoring=config.model.encoder.scoring,
            )  # fmt: skip
            loss = loss + config.next_item_weight * terms.total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
    return mean_over_workers(total, device)


def next_item_targets(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` with the action ids the auxiliary next-item loss selects positions by: a
    position whose next event is about another item than its own is a target ("click"), the
    others are not ("impression"). Histories with impressions hold the impression of an item
    right before its click, so retrieval's rule (next positive event) would teach copying."""
    items = batch["item_indices"]
    new_item = torch.ones_like(items, dtype=torch.bool)
    new_item[:, 1:] = items[:, 1:] != items[:, :-1]
    actions = torch.where(new_item, ACTION_IDS["click"], ACTION_IDS["impression"])
    return {**batch, "action_ids": actions}


def evaluate_sharded(
    dmp: DistributedModelParallel, shard: RankingExamples, config: RankingTrainConfig, device: torch.device, split: str
) -> dict[str, float]:
    """Metrics of the whole split from every worker's shard, identical on every worker (a collective)."""
    dmp.eval()
    probabilities, labels = [], []
    with torch.no_grad():
        for batch in shard.batches(config.eval_batch_size):
            batch = {key: value.to(device) for key, value in batch.items()}
            keep = batch["valid"].cpu()
            scores = torch.sigmoid(_forward(dmp, batch)[0].float()).cpu()
            probabilities.append(scores[keep].numpy())
            labels.append(batch["labels"].cpu()[keep].numpy())
    tasks = len(config.model.tasks)
    mine = Predictions(
        np.concatenate(probabilities) if probabilities else np.zeros((0, tasks), np.float32),
        np.concatenate(labels) if labels else np.zeros((0, tasks), np.float32),
        shard.user_ids[shard.valid_mask],
    )
    everyone: list[Predictions | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    dmp.train()
    metrics, _ = evaluate(
        Predictions.concatenate([part for part in everyone if part is not None]), config.model.tasks, split
    )
    return metrics


def warm_start_weights(
    info: ModelInfo, weights: dict[str, torch.Tensor], config: RankingTrainConfig, num_items: int
) -> dict[str, torch.Tensor]:
    """The sharded-ranker tensors a retrieval model provides: its item rows (a smaller, older
    table fills only its rows) and, for the ranker, its encoder as ``tower.encoder.*``."""
    encoder = config.model.encoder
    if info.encoder.dim != encoder.dim:
        raise ValueError(f"warm start needs the retrieval model's dim {info.encoder.dim} to equal {encoder.dim}")
    if info.num_items > num_items:
        raise ValueError(f"the retrieval model knows {info.num_items} items but the vocabulary read has {num_items}")
    full = sharded_weights({PLAIN_WEIGHT: weights[PLAIN_WEIGHT]})
    if config.model.kind == "ranker":
        if info.encoder != encoder:
            raise ValueError(
                f"warm start of the ranker needs the retrieval encoder config {info.encoder} to equal {encoder}"
            )
        full.update({f"tower.{key}": value for key, value in weights.items() if key.startswith("encoder.")})
    return full


def _checkpoint(
    dmp: DistributedModelParallel, optimizer: torch.optim.Optimizer, progress: Progress, info: RankingInfo, run_id: str
) -> ray.train.Checkpoint | None:
    """The epoch's checkpoint: the exported ranker and the optimizer states."""

    def save(directory: Path, weights: dict[str, torch.Tensor]) -> None:
        save_ranking_model(directory, info, plain_weights(weights, info.config.encoder.dim))

    return write_checkpoint(dmp, optimizer, progress, save, f"streamrec-ranking-checkpoint-{run_id}-")


def _restore(
    dmp: DistributedModelParallel, optimizer: torch.optim.Optimizer, job: RankingJob, num_items: int
) -> Progress:
    """Continue from Ray Train's latest checkpoint (a restarted worker group), else warm-start
    from a retrieval model, else start fresh."""
    progress = restore_checkpoint(dmp, optimizer, read_ranking_weights)
    if progress is not None:
        return progress
    if job.warm_start is not None:
        info, weights = ray.get(job.warm_start)
        load_state(dmp.state_dict(), warm_start_weights(info, weights, job.config, num_items))
    return Progress()

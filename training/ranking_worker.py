"""The Ray Train worker loop of ranking: every worker trains its shard of the examples with DMP.

As retrieval (``training.worker``): per epoch each worker takes an equal, disjoint shard of the
train split (reshuffled every epoch); the item table is sharded row-wise across workers
(``training.sharding.shard_model``, fused optimizer in backward), the tower is replicated and
synchronised by DDP. The loss is the weighted sum of each task's mean BCE. Then each worker
scores its shard of the validation split, the predictions are all-gathered, and every worker
computes the same metrics (``training.ranking_metrics``); all report one checkpoint (the
exported ranker plus optimizer states, gathered on rank 0), and rank 0 logs the epoch's metrics
to the MLflow run the driver opened. A restarted worker group resumes from the last checkpoint.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
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
from training.loss import retrieval_loss
from training.model import PLAIN_WEIGHT
from training.model_io import ModelInfo
from training.ranking_config import RankingTrainConfig
from training.ranking_eval import Predictions, evaluate
from training.ranking_io import RankingInfo, read_ranking_weights, save_ranking_model
from training.ranking_model import ranking_loss
from training.ranking_sharded import ShardedRankingModel
from training.sharded_model import lookup_input, plain_weights, sharded_weights
from training.sharding import dense_optimizer, gather_state, load_state, shard_model
from training.tracking import log_metrics
from training.worker import (
    MODEL_DIR,
    TRAIN_STATE_FILE,
    Progress,
    _load_exactly,
    _quiet_libraries,
    table_optimizer_state,
)


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
    _quiet_libraries()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config.seed)

    max_len = config.model.encoder.max_len
    train = load_ranking_examples(job.settings, "train", job.versions, max_len=max_len)
    val = load_ranking_examples(job.settings, "validation", job.versions, max_len=max_len)
    num_items = train.num_items
    model = ShardedRankingModel(config.model, num_items, table_device=torch.device("meta"))
    sharding = config.sharding_config()
    dmp = shard_model(model, sharding, device, context.get_local_world_size())  # type: ignore[arg-type]
    optimizer = dense_optimizer(dmp, sharding)
    progress = _restore(dmp, optimizer, job, num_items)
    info = RankingInfo(config.model, num_items, job.versions.as_dict(), train.window_ms)
    weights = torch.tensor(config.weights(), device=device)
    if rank == 0 and progress.epoch:
        log_metrics(job.settings, job.run_id, {"resumed_from_epoch": float(progress.epoch)}, step=progress.epoch)

    val_shard = val.shard(rank, world)
    for epoch in range(progress.epoch + 1, config.epochs + 1):
        if config.patience and progress.stale_epochs >= config.patience:
            break
        started = time.perf_counter()
        shard = train.shard(rank, world, seed=config.seed, epoch=epoch, shuffle=True)
        loss = _train_epoch(dmp, optimizer, shard, job, epoch, weights, device)
        seconds = time.perf_counter() - started
        val_metrics = evaluate_sharded(dmp, val_shard, config, device, "val")
        metrics = {
            "epoch": float(epoch),
            "train_loss": loss,
            "train_seconds": seconds,
            "train_examples_per_s": len(train) / seconds,
            **val_metrics,
        }
        progress.record(epoch, metrics, f"val_{config.selection_metric}")
        ray.train.report(metrics, checkpoint=_checkpoint(dmp, optimizer, progress, info))
        if rank == 0:
            log_metrics(job.settings, job.run_id, {k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)


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
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=job.use_gpu)
    rank = dist.get_rank()
    generator = torch.Generator().manual_seed(
        int(np.random.SeedSequence([config.seed, epoch, rank]).generate_state(1)[0])
    )
    next_item = config.uses_next_item_loss()
    num_items = dmp.module.num_items
    for batch in shard.batches(config.batch_size, seed=config.seed, epoch=epoch, shuffle=True):
        batch = {key: value.to(device) for key, value in batch.items()}
        negatives = None
        if next_item:
            negatives = torch.randint(1, num_items + 1, (config.num_negatives,), generator=generator).to(device)
        with autocast:
            logits, hidden, history_emb, negative_emb = _forward(dmp, batch, negatives)
        loss = ranking_loss(logits, batch["labels"], weights, batch["valid"])
        if negatives is not None:
            terms = retrieval_loss(
                hidden, history_emb, next_item_targets(batch), negatives, negative_emb, generator=generator,
                temperature=config.temperature, in_batch_negatives=config.in_batch_negatives, ntr_weight=0.0,
            )  # fmt: skip
            loss = loss + config.next_item_weight * terms.total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
    dist.all_reduce(total)
    loss_sum, steps = total.tolist()
    return loss_sum / max(steps, 1.0)


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
    dmp: DistributedModelParallel, optimizer: torch.optim.Optimizer, progress: Progress, info: RankingInfo
) -> ray.train.Checkpoint | None:
    """Gather the model and optimizer states on rank 0 and write them to a checkpoint there."""
    weights = gather_state(dmp.state_dict())
    table_state = gather_state(table_optimizer_state(dmp))
    if weights is None:
        return None
    directory = Path(tempfile.mkdtemp(prefix="streamrec-ranking-checkpoint-"))
    save_ranking_model(directory / MODEL_DIR, info, plain_weights(weights, info.config.encoder.dim))
    state = {"progress": asdict(progress), "dense_optimizer": optimizer.state_dict(), "table_optimizer": table_state}
    torch.save(state, directory / TRAIN_STATE_FILE)
    return ray.train.Checkpoint.from_directory(directory)


def _restore(
    dmp: DistributedModelParallel, optimizer: torch.optim.Optimizer, job: RankingJob, num_items: int
) -> Progress:
    """Continue from Ray Train's latest checkpoint (a restarted worker group), else warm-start
    from a retrieval model, else start fresh."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        if job.warm_start is not None:
            info, weights = ray.get(job.warm_start)
            load_state(dmp.state_dict(), warm_start_weights(info, weights, job.config, num_items))
        return Progress()
    with checkpoint.as_directory() as directory:
        weights = sharded_weights(read_ranking_weights(Path(directory) / MODEL_DIR))
        state = torch.load(Path(directory) / TRAIN_STATE_FILE, map_location="cpu", weights_only=False)
    _load_exactly(dmp.state_dict(), weights)
    _load_exactly(table_optimizer_state(dmp), state["table_optimizer"])
    optimizer.load_state_dict(state["dense_optimizer"])
    return Progress(**state["progress"])

"""The typed configuration of a retrieval training run (the encoder's and the item table's,
which ranking shares, are ``training.common.config``'s).

Defaults are the reference hyperparameters of the HSTU repository on MovieLens-1M
(DESIGN section 4): dim 50, 2 blocks, 1 head, max_len 200, batch 128, Adam lr 1e-3 with
betas 0.9/0.98, 128 uniform negatives, temperature 0.05, dropout 0.2.
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training.common.config import (
    DeviceChoice,
    EncoderConfig,
    LossKind,
    PrecisionChoice,
    Scoring,
    TableConfig,
    nest_table_fields,
)

LossChoice = Literal["auto", "sampled", "sampled_logq", "full"]
LrSchedule = Literal["constant", "cosine", "linear"]


class EvalOptions(TypedDict):
    """The keyword options ``training.retrieval.evaluation.split_ranks`` takes from a TrainConfig."""

    batch_size: int
    sampled: bool
    negatives: int


class LossOptions(TypedDict):
    """The keyword options ``training.common.loss.retrieval_loss`` takes from a TrainConfig."""

    kind: LossKind
    temperature: float
    in_batch_negatives: int
    ntr_weight: float
    num_items: int
    chunk_items: int
    scoring: Scoring


class TrainConfig(BaseModel):
    """Everything that decides what a training run computes (the MLflow params)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    epochs: int = Field(
        200, ge=1, description="Hard cap on epochs; early stopping (patience, patience_fraction) ends runs sooner."
    )
    batch_size: int = Field(128, ge=1, description="Sequences per batch on each worker.")
    length_bucketing: bool = Field(
        True, description="Group training batches by history length, so batches carry little padding."
    )
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the dense (data-parallel) parameters.")
    betas: tuple[float, float] = Field((0.9, 0.98), description="Adam betas of the dense parameters.")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay of the dense parameters.")
    table: TableConfig = Field(
        default_factory=TableConfig, description="The item table's optimizer, learning rate and sharding."
    )
    warm_start_lr_scale: float = Field(
        0.1,
        gt=0,
        le=1,
        description="A warm-started run trains the item table at this fraction of its learning rate: the "
        "table's optimizer state starts afresh, and row-wise Adagrad's first steps, its largest, would undo "
        "the trained rows.",
    )
    loss: LossChoice = Field(
        "auto",
        description="sampled (uniform + in-batch negatives), sampled_logq (the same, logQ-corrected), full "
        "(softmax over the whole catalogue); auto = full up to full_loss_max_items items, else sampled_logq.",
    )
    full_loss_max_items: int = Field(
        2_000,
        ge=0,
        description="loss auto: the largest catalogue trained with the full softmax (its cost grows with the "
        "catalogue: docs/training.md).",
    )
    loss_chunk_items: int = Field(
        8192, ge=1, description="full loss: items scored at once (memory = positions x chunk, not x catalogue)."
    )
    num_negatives: int = Field(128, ge=1, description="Uniform random negatives per batch (shared by its positions).")
    in_batch_negatives: int = Field(128, ge=0, description="Negatives drawn from the batch's own target items.")
    temperature: float = Field(
        0.05, gt=0, description="Softmax temperature over cosine similarities (encoder.scoring cosine; dot has none)."
    )
    ntr_weight: float = Field(
        0.1, ge=0, description="Weight of the not-to-recommend term for skipped/disliked next items; 0 disables."
    )
    eval_ks: tuple[int, ...] = Field((10, 50, 200), description="Cut-offs of HR@K and NDCG@K.")
    eval_batch_size: int = Field(256, ge=1, description="Sequences per evaluation batch.")
    sampled_eval: bool = Field(False, description="Rank the target among 100 random unseen items instead of all.")
    eval_negatives: int = Field(100, ge=1, description="Negatives per row in sampled evaluation.")
    val_users: int = Field(
        2000,
        ge=0,
        description="Validation users per epoch (a fixed random sample, for early stopping and the best "
        "epoch); the best epoch's model is then validated on all users. 0 = all users every epoch.",
    )
    selection_metric: str = Field("ndcg_10", description="Validation metric that selects the best epoch.")
    patience: int = Field(
        5, ge=0, description="Stop after at least this many epochs without a better val metric; 0 = never."
    )
    patience_fraction: float = Field(
        0.25,
        ge=0,
        description="Patience grows with the run: stop after max(patience, patience_fraction x best epoch) "
        "epochs without a better val metric, so a model still improving late gets as long to improve again.",
    )
    lr_schedule: LrSchedule = Field(
        "constant", description="Learning-rate decay after warm-up over `epochs`: constant, cosine or linear to 0."
    )
    warmup_epochs: float = Field(
        0.0, ge=0, description="Linear learning-rate warm-up from 0 over this many epochs (fractions allowed)."
    )
    data_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Train on this share of the train split's users (a fixed hash of the user id, so 0.25 is "
        "inside 0.5; features.subsample); validation and test keep every user.",
    )
    device: DeviceChoice = Field(
        "auto",
        description="Where the Ray Train workers train: cpu (gloo), cuda (one GPU per worker, NCCL, FBGEMM's fused "
        "GPU kernels for the item table); auto = cuda when train.use_gpu is set or the Ray cluster offers one GPU "
        "per worker, else cpu.",
    )
    precision: PrecisionChoice = Field(
        "auto",
        description="The training forward pass in fp32 or under bf16 autocast (on CPU too; the loss and the "
        "optimizers stay float32); auto = bf16 on cuda, fp32 on cpu.",
    )
    seed: int = Field(0, description="Seed of initialisation, shuffling and negative sampling.")
    fail_once_after_epoch: int = Field(
        0, ge=0, description="Fault injection: one worker exits once after this epoch's checkpoint; 0 = never."
    )

    @model_validator(mode="before")
    @classmethod
    def _table_fields_at_top(cls, data: Any) -> Any:
        return nest_table_fields(data)

    @model_validator(mode="after")
    def _known_selection_metric(self) -> TrainConfig:
        known = {f"{name}_{k}" for name in ("hr", "ndcg") for k in self.eval_ks} | {"mrr"}
        if self.selection_metric not in known:
            raise ValueError(f"selection_metric {self.selection_metric!r} is not one of {sorted(known)}")
        return self

    def table_optimizer(self, use_gpu: bool) -> tuple[str, float]:
        """(optimizer name, learning rate) of the sharded item table."""
        return self.table.optimizer(use_gpu, self.lr)

    def warm_started(self, use_gpu: bool) -> TrainConfig:
        """This config for a run that starts from a trained model: the item table's learning
        rate times ``warm_start_lr_scale``, stated as ``embedding_lr`` so MLflow records what ran."""
        _, lr = self.table_optimizer(use_gpu)
        table = self.table.model_copy(update={"embedding_lr": lr * self.warm_start_lr_scale})
        return self.model_copy(update={"table": table})

    def resolved_loss(self, num_items: int) -> LossKind:
        """The loss that runs on a catalogue of ``num_items`` items (``auto`` resolved)."""
        if self.loss != "auto":
            return self.loss
        # benchmarks/results/train_losses_wikipedia*.json, train_loss_cost.json: full and sampled_logq
        # beat sampled at 1,000 items; full costs 10-25 times as much per batch at 10,000 items.
        return "full" if num_items <= self.full_loss_max_items else "sampled_logq"

    def eval_options(self) -> EvalOptions:
        """The keyword options ``training.retrieval.evaluation.split_ranks`` takes from this config."""
        return {"batch_size": self.eval_batch_size, "sampled": self.sampled_eval, "negatives": self.eval_negatives}

    def loss_options(self, num_items: int) -> LossOptions:
        """The keyword options ``training.common.loss.retrieval_loss`` takes from this config, on
        a catalogue of ``num_items`` items."""
        return {
            "kind": self.resolved_loss(num_items),
            "temperature": self.temperature,
            "in_batch_negatives": self.in_batch_negatives,
            "ntr_weight": self.ntr_weight,
            "num_items": num_items,
            "chunk_items": self.loss_chunk_items,
            "scoring": self.encoder.scoring,
        }

    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        """The learning rates' factor at optimizer ``step`` (0-based, counted over the whole run):
        a linear warm-up over ``warmup_epochs``, then ``lr_schedule`` over the rest of ``epochs``."""
        warmup = self.warmup_epochs * steps_per_epoch
        if step < warmup:
            return (step + 1) / warmup
        if self.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1.0, self.epochs * steps_per_epoch - warmup))
        return 1.0 - progress if self.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    def flat_params(self) -> dict[str, str]:
        """Every field as a flat {name: value} map for MLflow params (encoder.* prefixed; the
        table's fields unprefixed, as they were named before the table had its own config)."""
        params = {f"encoder.{key}": str(value) for key, value in self.encoder.model_dump().items()}
        params.update({key: str(value) for key, value in self.table.model_dump().items()})
        params.update({key: str(value) for key, value in self.model_dump(exclude={"encoder", "table"}).items()})
        return params

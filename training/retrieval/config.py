"""The typed configuration of a retrieval training run (the encoder's and the item table's,
which ranking shares, are ``training.common.config``'s).

Defaults are the reference hyperparameters of the HSTU repository on MovieLens-1M
(DESIGN section 4): dim 50, 2 blocks, 1 head, max_len 200, batch 128, Adam lr 1e-3 with
betas 0.9/0.98, 128 uniform negatives, temperature 0.05, dropout 0.2.
"""

from __future__ import annotations

from typing import Any, TypedDict

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training.common.config import EncoderConfig, TableConfig, nest_table_fields


class LossOptions(TypedDict):
    """The keyword options ``training.common.loss.retrieval_loss`` takes from a TrainConfig."""

    temperature: float
    in_batch_negatives: int
    ntr_weight: float


class TrainConfig(BaseModel):
    """Everything that decides what a training run computes (the MLflow params)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    epochs: int = Field(20, ge=1, description="Most epochs to train (early stopping may end sooner).")
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
    num_negatives: int = Field(128, ge=1, description="Uniform random negatives per batch (shared by its positions).")
    in_batch_negatives: int = Field(128, ge=0, description="Negatives drawn from the batch's own target items.")
    temperature: float = Field(0.05, gt=0, description="Softmax temperature over cosine similarities.")
    ntr_weight: float = Field(
        0.1, ge=0, description="Weight of the not-to-recommend term for skipped/disliked next items; 0 disables."
    )
    eval_ks: tuple[int, ...] = Field((10, 50, 200), description="Cut-offs of HR@K and NDCG@K.")
    eval_batch_size: int = Field(256, ge=1, description="Sequences per evaluation batch.")
    sampled_eval: bool = Field(False, description="Rank the target among 100 random unseen items instead of all.")
    eval_negatives: int = Field(100, ge=1, description="Negatives per row in sampled evaluation.")
    selection_metric: str = Field("ndcg_10", description="Validation metric that selects the best epoch.")
    patience: int = Field(5, ge=0, description="Stop after this many epochs without a better val metric; 0 = never.")
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

    def loss_options(self) -> LossOptions:
        """The keyword options ``training.common.loss.retrieval_loss`` takes from this config."""
        return {
            "temperature": self.temperature,
            "in_batch_negatives": self.in_batch_negatives,
            "ntr_weight": self.ntr_weight,
        }

    def flat_params(self) -> dict[str, str]:
        """Every field as a flat {name: value} map for MLflow params (encoder.* prefixed; the
        table's fields unprefixed, as they were named before the table had its own config)."""
        params = {f"encoder.{key}": str(value) for key, value in self.encoder.model_dump().items()}
        params.update({key: str(value) for key, value in self.table.model_dump().items()})
        params.update({key: str(value) for key, value in self.model_dump(exclude={"encoder", "table"}).items()})
        return params

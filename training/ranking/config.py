"""Typed configurations of the multi-task rankers and of a ranking training run.

``RankerConfig`` is the architecture (exported with the model); ``RankingTrainConfig`` is
everything a run computes (its MLflow params). The item table is trained and sharded as
retrieval's (``training.common.sharding``), configured by the same ``TableConfig``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from features.tables import RANKING_TASKS
from training.common.config import EncoderConfig, TableConfig, nest_table_fields

TASKS: tuple[str, ...] = tuple(RANKING_TASKS)  # heads in label-column order of features/ranking_examples

RankerKind = Literal["ranker", "dlrm"]
Mixture = Literal["mmoe", "shared_bottom"]


def _default_encoder() -> EncoderConfig:
    return EncoderConfig(kind="hstu", dim=32, num_blocks=2, num_heads=1, max_len=50, dropout=0.2)


class RankerConfig(BaseModel):
    """Architecture of a ranker: how the history is summarised, the multi-task layer, the heads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: RankerKind = Field(
        "ranker",
        description="ranker: HSTU-encoded history + target attention; dlrm: mean-pooled history (the baseline).",
    )
    encoder: EncoderConfig = Field(
        default_factory=_default_encoder,
        description="The history encoder (HSTU blocks of training.common.hstu); dlrm uses only its dim and max_len.",
    )
    mixture: Mixture = Field("mmoe", description="mmoe (experts + a softmax gate per task) or shared_bottom.")
    experts: int = Field(4, ge=1, description="MMoE experts.")
    expert_dim: int = Field(64, ge=1, description="Width of each expert (of the shared bottom).")
    tower_dim: int = Field(32, ge=1, description="Hidden width of each task's head.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout in the experts and heads.")
    tasks: tuple[str, ...] = Field(TASKS, description="Heads, in label-column order of features/ranking_examples.")

    @model_validator(mode="before")
    @classmethod
    def _encoder_over_the_rankers_default(cls, data: Any) -> Any:
        """Encoder fields given as a mapping (a config file, CLI options, workflow overrides) are
        set on the ranker's default encoder, not on EncoderConfig's (dim 50, max_len 200)."""
        if isinstance(data, dict) and isinstance(data.get("encoder"), dict):
            return {**data, "encoder": {**_default_encoder().model_dump(), **data["encoder"]}}
        return data

    @model_validator(mode="after")
    def _known_tasks(self) -> RankerConfig:
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}")
        return self


class RankingTrainConfig(BaseModel):
    """Everything that decides what a ranking run computes (the MLflow params)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: RankerConfig = Field(default_factory=RankerConfig)
    task_weights: dict[str, float] = Field(
        default_factory=dict, description="Weight of each task's BCE in the loss; missing tasks weigh 1."
    )
    next_item_weight: float = Field(
        0.0,
        ge=0,
        description="ranker: weight of an auxiliary next-item loss on its HSTU states (retrieval's sampled "
        "softmax, training.common.loss; target = the next event's item when it is another item); 0 disables. dlrm "
        "has no sequence encoder and ignores it.",
    )
    num_negatives: int = Field(64, ge=1, description="Uniform negatives per batch of the next-item loss.")
    in_batch_negatives: int = Field(64, ge=0, description="In-batch negatives of the next-item loss.")
    temperature: float = Field(0.05, gt=0, description="Softmax temperature of the next-item loss.")
    epochs: int = Field(8, ge=1, description="Most epochs (early stopping may end sooner).")
    batch_size: int = Field(128, ge=1, description="Examples per batch on each worker.")
    lr: float = Field(
        3e-3,
        gt=0,
        description="Adam learning rate of the dense parameters (3e-3: best of 1e-3, 3e-3 on synthetic validation).",
    )
    betas: tuple[float, float] = Field((0.9, 0.98), description="Adam betas of the dense parameters.")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay of the dense parameters.")
    table: TableConfig = Field(
        default_factory=TableConfig, description="The item table's optimizer, learning rate and sharding."
    )
    eval_batch_size: int = Field(512, ge=1, description="Examples per evaluation batch.")
    selection_metric: str = Field("auc_click", description="Validation metric (higher is better) that picks the epoch.")
    patience: int = Field(3, ge=0, description="Stop after this many epochs without a better val metric; 0 = never.")
    seed: int = Field(0, description="Seed of initialisation and shuffling.")
    registered_model: str | None = Field(
        None, description="MLflow registered model of the run; None: Settings.registered_ranking_model."
    )
    warm_start: str | None = Field(
        None,
        description="A registered retrieval version (of Settings.registered_model, or 'latest') whose item rows "
        "(both kinds) and HSTU blocks (ranker; the encoder configs must be equal) initialise the run.",
    )

    @model_validator(mode="before")
    @classmethod
    def _table_fields_at_top(cls, data: Any) -> Any:
        return nest_table_fields(data)

    @model_validator(mode="after")
    def _check(self) -> RankingTrainConfig:
        unknown = set(self.task_weights) - set(self.model.tasks)
        if unknown:
            raise ValueError(f"task_weights name tasks the model has no head for: {sorted(unknown)}")
        if any(weight < 0 for weight in self.task_weights.values()):
            raise ValueError("task weights must be >= 0")
        metric, _, task = self.selection_metric.partition("_")
        if metric not in ("auc", "gauc") or task not in (*self.model.tasks, "mean"):
            raise ValueError(
                f"selection_metric must be auc_<task>, gauc_<task> or auc_mean, not {self.selection_metric!r}"
            )
        return self

    def uses_next_item_loss(self) -> bool:
        return self.model.kind == "ranker" and self.next_item_weight > 0

    def weights(self) -> list[float]:
        """The loss weight of every head, in task order."""
        return [float(self.task_weights.get(task, 1.0)) for task in self.model.tasks]

    def flat_params(self) -> dict[str, str]:
        """Every field as a flat {name: value} map for MLflow params (model.*, model.encoder.*; the
        table's fields unprefixed, as they were named before the table had its own config)."""
        model = self.model.model_dump(exclude={"encoder"})
        params = {f"model.{key}": str(value) for key, value in model.items()}
        params.update({f"model.encoder.{key}": str(value) for key, value in self.model.encoder.model_dump().items()})
        params.update({key: str(value) for key, value in self.table.model_dump().items()})
        params.update({key: str(value) for key, value in self.model_dump(exclude={"model", "table"}).items()})
        return params

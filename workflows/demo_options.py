"""The options of one `make demo` run (the `streamrec demo` options), apart from the demo so the
CLI reads their defaults without importing torch, Ray or Spark."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from infra.model_options import merge
from training.ranking.config import RankingTrainConfig
from training.retrieval.config import TrainConfig


@dataclass(frozen=True)
class DemoOptions:
    """Sizes of one demo run (the `streamrec demo` options), and overrides of its training runs:
    ``train`` (TrainConfig fields, nested as in a `streamrec train --config` file) and
    ``ranking_train`` (RankingTrainConfig's) over the epochs and seed above. Invalid overrides
    fail here, with TrainConfig's reasons, before anything starts."""

    events: int = 200_000
    users: int = 2_000
    items: int = 5_000
    bad_fraction: float = 0.01
    epochs: int = 15
    workers: int = 2
    seed: int = 0
    ranking_epochs: int = 2
    train: Mapping[str, Any] = field(default_factory=dict)
    ranking_train: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.train_config("hstu")
        self.ranking_config()

    def train_config(self, kind: str, epochs: int | None = None) -> TrainConfig:
        """The TrainConfig of the demo's ``kind`` run (the demo trains each kind; ``epochs``
        instead of the demo's, for the warm-start round)."""
        fields = merge({"epochs": self.epochs if epochs is None else epochs, "seed": self.seed}, self.train)
        return TrainConfig.model_validate(merge(fields, {"encoder": {"kind": kind}}))

    def ranking_config(self) -> RankingTrainConfig:
        """The RankingTrainConfig of the demo's ranker."""
        return RankingTrainConfig.model_validate(
            merge({"epochs": self.ranking_epochs, "seed": self.seed}, self.ranking_train)
        )

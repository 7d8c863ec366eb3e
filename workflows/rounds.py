"""One round of the loop as plain functions: train a candidate, then the promotion gate.

The ``retrieval_model`` asset calls ``train_candidate``; scripts and the demo can run a whole
warm-start round without Dagster::

    from workflows.rounds import TrainOptions, warm_start_round
    round_ = warm_start_round(settings, TrainOptions(epochs=3), log=print)
    round_.trained.model_version, round_.warm_start_from, round_.gate.decision.label

A warm start continues the version the serving alias names, with its architecture (a warm
start needs the same encoder config); without a production version, or with
``from_scratch``, the options' architecture is trained from random initialisation.

The ``ranking_model`` asset (and the demo) call ``train_ranker``: a multi-task ranker trained
on features/ranking_examples and registered as ``settings.registered_ranking_model``::

    from workflows.rounds import RankingOptions, train_ranker
    outcome = train_ranker(settings, RankingOptions(epochs=3, workers=2), log=print)
    outcome.model_version, outcome.metrics["best_val_auc_click"], outcome.metrics["test_auc_click"]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from infra.settings import Settings
from workflows.promotion import GateOutcome, GatePolicy, run_gate

if TYPE_CHECKING:
    from training.ranking.runner import RankingOutcome
    from training.retrieval.runner import TrainOutcome

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainOptions:
    """A training run of the retrieval model (the architecture fields apply to from-scratch runs)."""

    from_scratch: bool = False
    kind: Literal["hstu", "sasrec"] = "hstu"
    dim: int = 50
    num_blocks: int = 2
    num_heads: int = 1
    max_len: int = 200
    dropout: float = 0.2
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    patience: int = 5
    seed: int = 0
    workers: int = 0  # 0 = settings.train_workers


@dataclass(frozen=True)
class RankingOptions:
    """A ranking run (the defaults are ``training.ranking.config.RankingTrainConfig``'s)."""

    kind: Literal["ranker", "dlrm"] = "ranker"
    epochs: int = 8
    batch_size: int = 128
    lr: float = 3e-3
    patience: int = 3
    seed: int = 0
    workers: int = 0  # 0 = settings.train_workers


@dataclass(frozen=True)
class Candidate:
    """A trained and registered candidate, and the version it warm-started from (None: from scratch)."""

    trained: TrainOutcome
    warm_start_from: str | None
    kind: str


@dataclass(frozen=True)
class Round:
    """One round: the candidate and what the gate did with it."""

    trained: TrainOutcome
    warm_start_from: str | None
    gate: GateOutcome


def train_candidate(settings: Settings, options: TrainOptions, log: Log = print) -> Candidate:
    """Train and register a retrieval model: a warm start from production unless there is none
    or ``options.from_scratch``."""
    from serving.registry import served_version
    from training.common import tracking
    from training.retrieval.config import EncoderConfig, TrainConfig
    from training.retrieval.io import read_info
    from training.retrieval.runner import train

    production = None if options.from_scratch else served_version(settings)
    if production is None:
        encoder = EncoderConfig(
            kind=options.kind,
            dim=options.dim,
            num_blocks=options.num_blocks,
            num_heads=options.num_heads,
            max_len=options.max_len,
            dropout=options.dropout,
        )
        log("training from scratch" + ("" if options.from_scratch else ": no production version yet"))
    else:
        with tracking.downloaded_version(settings, production) as directory:
            encoder = read_info(directory).encoder
        log(f"warm start from production version {production} ({encoder.kind}, dim {encoder.dim})")
    config = TrainConfig(
        encoder=encoder,
        epochs=options.epochs,
        batch_size=options.batch_size,
        lr=options.lr,
        patience=options.patience,
        seed=options.seed,
    )
    trained = train(settings, config, workers=options.workers or None, warm_start=production, log=log)
    return Candidate(trained, production, encoder.kind)


def warm_start_round(
    settings: Settings, options: TrainOptions | None = None, policy: GatePolicy | None = None, log: Log = print
) -> Round:
    """Train a candidate (warm start from production when there is one), then gate it."""
    candidate = train_candidate(settings, options or TrainOptions(epochs=3), log)
    gate = run_gate(settings, candidate.trained.model_version, policy)
    log(f"gate {gate.decision.label}: {gate.decision.reason}")
    return Round(candidate.trained, candidate.warm_start_from, gate)


def train_ranker(settings: Settings, options: RankingOptions, log: Log = print) -> RankingOutcome:
    """Train a ranker on the latest features/ranking_examples on Ray Train and register it
    (``settings.registered_ranking_model``); nothing is promoted."""
    from training.ranking.config import RankerConfig, RankingTrainConfig
    from training.ranking.runner import train_ranking

    config = RankingTrainConfig(
        model=RankerConfig(kind=options.kind),
        epochs=options.epochs,
        batch_size=options.batch_size,
        lr=options.lr,
        patience=options.patience,
        seed=options.seed,
    )
    return train_ranking(settings, config, workers=options.workers or None, log=log)

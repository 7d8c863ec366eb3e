"""One round of the loop as plain functions: the previous candidate's gate, train a candidate,
then the promotion gate.

The ``retrieval_model`` asset calls ``train_candidate``; scripts and the demo can run a whole
warm-start round without Dagster::

    from workflows.rounds import TrainOptions, round_train_config, warm_start_round
    round_ = warm_start_round(settings, TrainOptions(round_train_config({"epochs": 3})), log=print)
    round_.trained.model_version, round_.warm_start_from, round_.gate.decision.label

A warm start continues the version the serving alias names, with its architecture (a warm
start needs the same encoder config); without a production version, or with
``from_scratch``, the config's architecture is trained from random initialisation.

The options hold the run's ``TrainConfig`` / ``RankingTrainConfig`` itself: its defaults are
the training package's, except the few per-job values below (``ROUND_TRAIN`` etc.), which
are the only ones the workflows choose.

The ``ranking_model`` asset (and the demo) call ``train_ranker``: a multi-task ranker trained
on features/ranking_examples and registered as ``settings.mlflow.registered_ranking_model``::

    from workflows.rounds import RankingOptions, train_ranker
    outcome = train_ranker(settings, RankingOptions(ranking_train_config({"epochs": 3}), workers=2), log=print)
    outcome.model_version, outcome.metrics["best_val_auc_click"], outcome.metrics["test_auc_click"]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from infra.model_options import merge
from infra.settings import Settings
from training.retrieval.config import TrainConfig  # pydantic only: the definitions still load without torch
from workflows.promotion import FRESHNESS_GATE, GateOutcome, GatePolicy, run_gate

if TYPE_CHECKING:
    from training.ranking.config import RankingTrainConfig
    from training.ranking.runner import RankingOutcome
    from training.retrieval.runner import TrainOutcome

Log = Callable[[str], None]

# The TrainConfig values the workflows choose over the training package's defaults, all here.
ROUND_TRAIN: dict[str, Any] = {"epochs": 5}  # a round's retrieval run unless its job says otherwise
WARM_START_TRAIN: dict[str, Any] = {"epochs": 3}  # the hourly warm start (and warm_start_round's default)
FULL_RETRAIN_TRAIN: dict[str, Any] = {"epochs": 20}  # the daily retraining from scratch


def round_train_config(*overrides: Mapping[str, Any]) -> TrainConfig:
    """The TrainConfig of a round's retrieval run: ``ROUND_TRAIN`` with each of ``overrides``
    (nested fields, as a ``streamrec train --config`` file) on top; raises pydantic's
    ValidationError (a ValueError) naming what TrainConfig rejects."""
    fields: dict[str, Any] = dict(ROUND_TRAIN)
    for given in overrides:
        fields = merge(fields, given)
    return TrainConfig.model_validate(fields)


def ranking_train_config(overrides: Mapping[str, Any] | None = None) -> RankingTrainConfig:
    """The RankingTrainConfig of ``overrides`` (nested fields, as a ``streamrec train-ranking
    --config`` file) over its defaults; raises ValidationError as ``round_train_config``."""
    from training.ranking.config import RankingTrainConfig

    return RankingTrainConfig.model_validate(dict(overrides or {}))


@dataclass(frozen=True)
class TrainOptions:
    """A retrieval run of a round: its config (the encoder applies to from-scratch runs; a warm
    start keeps production's), whether to ignore production, and the Ray Train workers."""

    config: TrainConfig = field(default_factory=round_train_config)
    from_scratch: bool = False
    workers: int = 0  # 0 = settings.train.workers


@dataclass(frozen=True)
class RankingOptions:
    """A ranking run: its config and the Ray Train workers."""

    config: RankingTrainConfig = field(default_factory=ranking_train_config)
    workers: int = 0  # 0 = settings.train.workers


@dataclass(frozen=True)
class Candidate:
    """A trained and registered candidate, and the version it warm-started from (None: from scratch)."""

    trained: TrainOutcome
    warm_start_from: str | None
    kind: str


@dataclass(frozen=True)
class Round:
    """One round: the candidate and what the gate did with it, and what the gate did first with
    the previous round's candidate (``pending``; None when there was none to judge)."""

    trained: TrainOutcome
    warm_start_from: str | None
    gate: GateOutcome
    pending: GateOutcome | None = None


def train_candidate(settings: Settings, options: TrainOptions, log: Log = print) -> Candidate:
    """Train and register a retrieval model: a warm start from production unless there is none
    or ``options.from_scratch``."""
    from serving.registry import served_version
    from training.common import tracking
    from training.retrieval.io import read_info
    from training.retrieval.runner import train

    config = options.config
    production = None if options.from_scratch else served_version(settings)
    if production is None:
        log("training from scratch" + ("" if options.from_scratch else ": no production version yet"))
    else:
        with tracking.downloaded_version(settings, production) as directory:
            config = config.model_copy(update={"encoder": read_info(directory).encoder})
        log(f"warm start from production version {production} ({config.encoder.kind}, dim {config.encoder.dim})")
    trained = train(settings, config, workers=options.workers or None, warm_start=production, log=log)
    return Candidate(trained, production, config.encoder.kind)


def warm_start_round(
    settings: Settings, options: TrainOptions | None = None, policy: GatePolicy | None = None, log: Log = print
) -> Round:
    """Gate the previous round's candidate on the events that landed since (``gate_pending``),
    then train a candidate (warm start from production when there is one) and gate it
    (``policy``: by default the loop's, the freshness policy ``FRESHNESS_GATE``, which waits for
    events after the candidate's data: the next round judges it)."""
    policy = policy or FRESHNESS_GATE
    pending = gate_pending(settings, policy, log)
    candidate = train_candidate(settings, options or TrainOptions(round_train_config(WARM_START_TRAIN)), log)
    gate = run_gate(settings, candidate.trained.model_version, policy)
    log(f"gate: {gate.decision.label}: {gate.decision.reason}")
    return Round(candidate.trained, candidate.warm_start_from, gate, pending)


def gate_pending(settings: Settings, policy: GatePolicy = FRESHNESS_GATE, log: Log = print) -> GateOutcome | None:
    """Gate the waiting candidate (``workflows.promotion.pending_candidate``) again; None when
    there is none. Logs the decision as ``gate (pending vN): ...``. In Dagster the
    registered-model sensor does the same once newer features exist."""
    from workflows.promotion import pending_candidate

    newest = pending_candidate(settings)
    if newest is None:
        return None
    outcome = run_gate(settings, newest, policy)
    log(f"gate (pending v{newest}): {outcome.decision.label}: {outcome.decision.reason}")
    return outcome


def train_ranker(settings: Settings, options: RankingOptions, log: Log = print) -> RankingOutcome:
    """Train a ranker on the latest features/ranking_examples on Ray Train and register it
    (``settings.mlflow.registered_ranking_model``); nothing is promoted."""
    from training.ranking.runner import train_ranking

    return train_ranking(settings, options.config, workers=options.workers or None, log=log)

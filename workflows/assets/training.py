"""The model assets: training runs on Ray Train, tracked and registered in MLflow.

``retrieval_model`` (settings.mlflow.registered_model):

By default it warm-starts from the version serving now (the ``production`` alias) and keeps
that version's architecture; with ``from_scratch`` (the daily retraining), or while nothing is
in production, it trains the architecture of the config from random initialisation.

``ranking_model`` (settings.mlflow.registered_ranking_model): a multi-task ranker (or the DLRM
baseline) trained from scratch on features/ranking_examples (``workflows.rounds.train_ranker``).
Neither asset promotes: the retrieval gate (``workflows.assets.promotion``) or
``streamrec promote`` does.
"""

# No `from __future__ import annotations`: Dagster reads the context and resource annotations at definition.
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext
from pydantic import Field

from workflows.resources import StreamrecResource
from workflows.rounds import (
    RankingOptions,
    TrainOptions,
    ranking_train_config,
    round_train_config,
    train_candidate,
    train_ranker,
)

GROUP = "training"


class RetrievalTrainConfig(dg.Config):
    """A training run of the retrieval model: what only the workflow decides, and ``train``,
    TrainConfig fields validated by TrainConfig when the run starts."""

    from_scratch: bool = Field(default=False, description="Ignore production and train from random initialisation.")
    workers: int = Field(default=0, ge=0, description="Ray Train workers; 0 = settings.train.workers.")
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="TrainConfig fields over a round's defaults (TrainConfig's, but epochs 5), nested as in a "
        "`streamrec train --config` file, e.g. {epochs: 3, encoder: {dim: 64}}; the encoder applies to "
        "from-scratch runs (a warm start keeps production's). See docs/training.md.",
    )

    def options(self) -> TrainOptions:
        """The run's options; a ``train`` that TrainConfig rejects fails the run with its reasons."""
        try:
            config = round_train_config(self.train)
        except ValueError as error:
            raise dg.Failure(description=f"invalid retrieval_model config `train`: {error}") from error
        return TrainOptions(config, from_scratch=self.from_scratch, workers=self.workers)


@dg.asset(
    deps=["item_vocab", "user_sequences"],
    group_name=GROUP,
    kinds={"ray", "pytorch", "mlflow"},
    description="A registered version of the retrieval model (mlflow.registered_model), trained on Ray Train.",
)
def retrieval_model(
    context: AssetExecutionContext, config: RetrievalTrainConfig, streamrec: StreamrecResource
) -> dg.MaterializeResult:
    settings = streamrec.settings()
    candidate = train_candidate(settings, config.options(), log=context.log.info)
    outcome, production = candidate.trained, candidate.warm_start_from
    metadata = {
        **_run_metadata(settings, settings.mlflow.registered_model, outcome, RETRIEVAL_METRICS),
        "warm_start_from": production or "none (from scratch)",
        "model": candidate.kind,
    }
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(f"v{outcome.model_version}"))


class RankingModelConfig(dg.Config):
    """A ranking run: the Ray Train workers, and ``train``, RankingTrainConfig fields validated by
    RankingTrainConfig when the run starts."""

    workers: int = Field(default=0, ge=0, description="Ray Train workers; 0 = settings.train.workers.")
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="RankingTrainConfig fields over its defaults, nested as in a `streamrec train-ranking "
        "--config` file, e.g. {epochs: 3, model: {kind: dlrm}}. See docs/ranking.md.",
    )

    def options(self) -> RankingOptions:
        """The run's options; a ``train`` that RankingTrainConfig rejects fails the run with its reasons."""
        try:
            config = ranking_train_config(self.train)
        except ValueError as error:
            raise dg.Failure(description=f"invalid ranking_model config `train`: {error}") from error
        return RankingOptions(config, workers=self.workers)


@dg.asset(
    deps=["ranking_examples", "item_vocab"],
    group_name=GROUP,
    kinds={"ray", "pytorch", "mlflow"},
    description="A registered version of the ranking model (mlflow.registered_ranking_model), trained on Ray Train.",
)
def ranking_model(
    context: AssetExecutionContext, config: RankingModelConfig, streamrec: StreamrecResource
) -> dg.MaterializeResult:
    settings = streamrec.settings()
    options = config.options()
    outcome = train_ranker(settings, options, log=context.log.info)
    metadata = {
        **_run_metadata(settings, settings.mlflow.registered_ranking_model, outcome, RANKING_METRICS),
        "model": options.config.model.kind,
    }
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(f"v{outcome.model_version}"))


RETRIEVAL_METRICS = ("best_val_ndcg_10", "best_val_hr_10", "test_ndcg_10", "test_hr_10")
RANKING_METRICS = ("best_val_auc_click", "best_val_gauc_click", "test_auc_click", "test_gauc_click")


def _run_metadata(settings: Any, model: str, outcome: Any, metrics: tuple[str, ...]) -> dict[str, Any]:
    """What a training asset records: the registered version, its MLflow run, the epochs, the
    feature versions it read and the ``metrics`` the run has."""
    from training.common import tracking

    metadata: dict[str, Any] = {
        "registered_model": model,
        "model_version": outcome.model_version,
        "mlflow_run_id": outcome.run_id,
        "mlflow_run": dg.MetadataValue.url(tracking.ui_url(settings, outcome.run_id)),
        "run_name": outcome.run_name,
        "epochs_run": len(outcome.history),
        "best_epoch": outcome.best_epoch,
    }
    versions = _feature_versions(settings, outcome.run_id)
    metadata.update({f"version.{table}": version for table, version in versions.items()})
    metadata.update({key: outcome.metrics[key] for key in metrics if key in outcome.metrics})
    return metadata


def _feature_versions(settings: Any, run_id: str) -> dict[str, int]:
    """The feature versions the run read (its ``version.<table>`` params)."""
    from training.common import tracking

    params = tracking.client(settings).get_run(run_id).data.params
    return {key.removeprefix("version."): int(value) for key, value in params.items() if key.startswith("version.")}

"""The model assets: training runs on Ray Train, tracked and registered in MLflow.

``retrieval_model`` (settings.registered_model):

By default it warm-starts from the version serving now (the ``production`` alias) and keeps
that version's architecture; with ``from_scratch`` (the daily retraining), or while nothing is
in production, it trains the architecture of the config from random initialisation.

``ranking_model`` (settings.registered_ranking_model): a multi-task ranker (or the DLRM
baseline) trained from scratch on features/ranking_examples (``workflows.rounds.train_ranker``).
Neither asset promotes: the retrieval gate (``workflows.assets.promotion``) or
``streamrec promote`` does.
"""

# No `from __future__ import annotations`: Dagster reads the context and resource annotations at definition.
from typing import Any, Literal

import dagster as dg
from dagster import AssetExecutionContext
from pydantic import Field

from workflows.resources import StreamrecResource
from workflows.rounds import RankingOptions, TrainOptions, train_candidate, train_ranker

GROUP = "training"


class RetrievalTrainConfig(dg.Config):
    """A training run of the retrieval model (architecture fields apply to from-scratch runs)."""

    from_scratch: bool = Field(default=False, description="Ignore production and train from random initialisation.")
    kind: Literal["hstu", "sasrec"] = Field(default="hstu", description="From scratch: hstu or sasrec.")
    dim: int = Field(default=50, description="From scratch: embedding and hidden width.")
    num_blocks: int = Field(default=2, description="From scratch: attention blocks.")
    num_heads: int = Field(default=1, description="From scratch: attention heads.")
    max_len: int = Field(default=200, description="From scratch: history length the encoder reads.")
    dropout: float = Field(default=0.2, description="From scratch: dropout.")
    epochs: int = Field(default=5, description="Most epochs (early stopping may end sooner).")
    batch_size: int = Field(default=128, description="Sequences per batch on each worker.")
    lr: float = Field(default=1e-3, description="Adam learning rate of the dense parameters.")
    patience: int = Field(default=5, description="Early-stopping patience in epochs; 0 = never.")
    seed: int = Field(default=0, description="Seed of initialisation, shuffling and negatives.")
    workers: int = Field(default=0, description="Ray Train workers; 0 = settings.train_workers.")


@dg.asset(
    deps=["item_vocab", "user_sequences"],
    group_name=GROUP,
    kinds={"ray", "pytorch", "mlflow"},
    description="A registered version of the retrieval model (settings.registered_model), trained on Ray Train.",
)
def retrieval_model(
    context: AssetExecutionContext, config: RetrievalTrainConfig, streamrec: StreamrecResource
) -> dg.MaterializeResult:
    settings = streamrec.settings()
    candidate = train_candidate(settings, TrainOptions(**config.model_dump()), log=context.log.info)
    outcome, production = candidate.trained, candidate.warm_start_from
    metadata = {
        **_run_metadata(settings, settings.registered_model, outcome, RETRIEVAL_METRICS),
        "warm_start_from": production or "none (from scratch)",
        "model": candidate.kind,
    }
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(f"v{outcome.model_version}"))


class RankingModelConfig(dg.Config):
    """A ranking run (the defaults are training.ranking.config.RankingTrainConfig's)."""

    kind: Literal["ranker", "dlrm"] = Field(
        default="ranker", description="ranker: HSTU history + target attention; dlrm: mean-pooled history."
    )
    epochs: int = Field(default=8, ge=1, description="Most epochs (early stopping may end sooner).")
    batch_size: int = Field(default=128, ge=1, description="Examples per batch on each worker.")
    lr: float = Field(default=3e-3, gt=0, description="Adam learning rate of the dense parameters.")
    patience: int = Field(default=3, ge=0, description="Early-stopping patience in epochs; 0 = never.")
    seed: int = Field(default=0, description="Seed of initialisation and shuffling.")
    workers: int = Field(default=0, ge=0, description="Ray Train workers; 0 = settings.train_workers.")


@dg.asset(
    deps=["ranking_examples", "item_vocab"],
    group_name=GROUP,
    kinds={"ray", "pytorch", "mlflow"},
    description="A registered version of the ranking model (settings.registered_ranking_model), trained on Ray Train.",
)
def ranking_model(
    context: AssetExecutionContext, config: RankingModelConfig, streamrec: StreamrecResource
) -> dg.MaterializeResult:
    settings = streamrec.settings()
    outcome = train_ranker(settings, RankingOptions(**config.model_dump()), log=context.log.info)
    metadata = {
        **_run_metadata(settings, settings.registered_ranking_model, outcome, RANKING_METRICS),
        "model": config.kind,
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

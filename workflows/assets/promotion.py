"""Evaluation and promotion assets: the gate of ``workflows.promotion`` as two steps.

``retrieval_evaluation`` evaluates the candidate and production now, at the candidate's
feature versions: on the most recent window under the freshness policy (resource
``promotion_policy``, the default ``kind``) when the candidate is trained on newer data, else on
the validation split; it records both in its metadata (the ``comparison`` entry holds it
whole, the window included). ``retrieval_promotion`` decides on the latest evaluation, logs the
decision to the candidate's MLflow run and moves the alias only when the candidate passes.

``ranking_promotion`` is the same gate for the ranking model in one step: the candidate ranker
and the production one evaluated on the validation split of features/ranking_examples at the
candidate's versions, then the decision (``ranking_promotion_policy``: click AUC by default).
"""

# No `from __future__ import annotations`: Dagster reads the context and resource annotations at definition.
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext
from pydantic import Field

from workflows import promotion
from workflows.resources import PromotionPolicy, RankingPromotionPolicy, StreamrecResource

GROUP = "promotion"
SHOWN_METRICS = ("ndcg_10", "hr_10", "ndcg_50", "hr_50", "mrr")
RANKING_SHOWN_METRICS = ("auc_click", "gauc_click", "auc_like", "auc_purchase")


class EvaluationConfig(dg.Config):
    """Which registered version is the candidate."""

    candidate_version: str = Field(
        default="",
        description="Registered version to judge; '' = the one the model asset (retrieval_model, ranking_model) "
        "registered in this run, else the newest registered version.",
    )


@dg.asset(
    deps=["retrieval_model"],
    group_name=GROUP,
    kinds={"mlflow"},
    description="Candidate and production evaluated now: on the window after the candidate's data at the newest "
    "feature versions (freshness policy, a candidate on newer data; empty right after training: it waits) or on "
    "validation at the candidate's feature versions.",
)
def retrieval_evaluation(
    context: AssetExecutionContext,
    config: EvaluationConfig,
    streamrec: StreamrecResource,
    promotion_policy: PromotionPolicy,
) -> dg.MaterializeResult:
    settings = streamrec.settings()
    candidate = (
        config.candidate_version
        or _registered_in_this_run(context, "retrieval_model")
        or promotion.newest_version(settings)
    )
    if candidate is None:
        raise dg.Failure(f"{settings.mlflow.registered_model} has no registered version to evaluate; train one first")
    context.log.info(f"evaluating candidate {settings.mlflow.registered_model} version {candidate} against production")
    comparison = promotion.compare(settings, candidate, policy=promotion_policy.policy())
    metadata: dict[str, Any] = {
        "registered_model": comparison.model,
        "candidate_version": comparison.candidate_version,
        "candidate_run_id": comparison.candidate_run_id,
        "production_version": comparison.production_version,
        "split": "window" if comparison.window is not None else promotion.SPLIT,
        **{f"version.{table}": version for table, version in comparison.feature_versions.items()},
        "comparison": dg.MetadataValue.json(json_safe(comparison)),
    }
    if comparison.window is not None:
        metadata["window"] = comparison.window
    prefix = promotion.WINDOW_PREFIX if comparison.window is not None else promotion.PREFIX
    metadata.update(_shown_metrics(comparison, SHOWN_METRICS, prefix))
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    deps=["retrieval_evaluation"],
    group_name=GROUP,
    kinds={"mlflow"},
    description="The serving alias after the gate: moved to the candidate only if it passed the policy (freshness: "
    "newer data, not worse than production beyond the tolerance on the events after its data; margin: better by the "
    "margin).",
)
def retrieval_promotion(
    context: AssetExecutionContext, streamrec: StreamrecResource, promotion_policy: PromotionPolicy
) -> dg.MaterializeResult:
    settings = streamrec.settings()
    event = context.instance.get_latest_materialization_event(dg.AssetKey("retrieval_evaluation"))
    if event is None or event.asset_materialization is None:
        raise dg.Failure("retrieval_evaluation was never materialised: evaluate a candidate first")
    recorded = event.asset_materialization.metadata["comparison"].value
    comparison = promotion.Comparison(**recorded)
    outcome = promotion.settle(settings, comparison, promotion_policy.policy())
    for note in outcome.notes:
        context.log.warning(note)
    context.log.info(f"gate {outcome.decision.label}: {outcome.decision.reason}")
    metadata = {**promotion.outcome_metadata(outcome), "evaluation_run_id": event.run_id}
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(f"v{outcome.production_after}"))


@dg.asset(
    deps=["ranking_model"],
    group_name=GROUP,
    kinds={"mlflow"},
    description="The ranking model's serving alias after the gate: moved to the candidate ranker only if its "
    "validation click AUC beat production's by the margin, on the same examples.",
)
def ranking_promotion(
    context: AssetExecutionContext,
    config: EvaluationConfig,
    streamrec: StreamrecResource,
    ranking_promotion_policy: RankingPromotionPolicy,
) -> dg.MaterializeResult:
    settings = streamrec.settings()
    name = settings.mlflow.registered_ranking_model
    candidate = (
        config.candidate_version
        or _registered_in_this_run(context, "ranking_model")
        or promotion.newest_version(settings, name)
    )
    if candidate is None:
        raise dg.Failure(f"{name} has no registered version to evaluate; train one first (ranking_model)")
    context.log.info(f"evaluating candidate {name} version {candidate} against production")
    comparison = promotion.compare(settings, candidate, "ranking")
    outcome = promotion.settle(settings, comparison, ranking_promotion_policy.policy())
    for note in outcome.notes:
        context.log.warning(note)
    context.log.info(f"gate {outcome.decision.label}: {outcome.decision.reason}")
    comparison = outcome.comparison
    metadata: dict[str, Any] = {
        **promotion.outcome_metadata(outcome),
        "split": promotion.SPLIT,
        **{f"version.{table}": version for table, version in comparison.feature_versions.items()},
        **_shown_metrics(comparison, RANKING_SHOWN_METRICS),
        "comparison": dg.MetadataValue.json(json_safe(comparison)),
    }
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(f"v{outcome.production_after}"))


def _shown_metrics(
    comparison: promotion.Comparison, names: tuple[str, ...], prefix: str = promotion.PREFIX
) -> dict[str, Any]:
    """``candidate_<prefix><name>`` and ``production_<prefix><name>`` of a comparison (prefix val_ or window_)."""
    shown: dict[str, Any] = {}
    for name in names:
        key = prefix + name
        shown[f"candidate_{key}"] = comparison.candidate_metrics.get(key)
        if comparison.production_metrics is not None:
            shown[f"production_{key}"] = comparison.production_metrics.get(key)
    return shown


def _registered_in_this_run(context: AssetExecutionContext, asset: str) -> str | None:
    """The version the ``asset`` (a model asset) registered earlier in this same run, if it did."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.run_id != context.run.run_id or event.asset_materialization is None:
        return None
    version = event.asset_materialization.metadata.get("model_version")
    return None if version is None else str(version.value)


def json_safe(comparison: promotion.Comparison) -> dict[str, Any]:
    """The comparison as plain JSON data (what ``Comparison(**data)`` reads back)."""
    import json

    return dict(json.loads(comparison.to_json()))

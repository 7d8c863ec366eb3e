"""The ranking assets materialised in-process on the session's Ray head and MLflow:
ranking_examples (the feature build with a RankingSpec, in-process, then as a Ray job) ->
ranking_model (Ray Train, 1 worker, 1 epoch) -> ranking_promotion (the gate on validation
click AUC), each recording its Delta and MLflow versions as metadata.

Small synthetic funnel data written straight into silver (no broker), on a lake and a
registered ranking model name of their own.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import dagster as dg
import pytest
from workflowdata import append_synthetic

from features.tables import ITEM_STATS_TABLE, ITEM_VOCAB_TABLE, RANKING_EXAMPLES_TABLE, USER_SEQUENCES_TABLE
from infra.settings import Settings, get_settings
from ingestion.schema import SILVER_TABLE
from ingestion.synthetic import SyntheticConfig
from workflows.assets import ranking_examples, ranking_model, ranking_promotion
from workflows.assets.promotion import EvaluationConfig
from workflows.assets.training import RankingModelConfig
from workflows.lineage import delta_version, row_count
from workflows.resources import RankingPromotionPolicy, StepRunner, StreamrecResource

pytestmark = pytest.mark.e2e  # ranking examples -> ranker -> gate on the mini-cluster

SYNTHETIC = dict(users=120, items=300, events=6_000, clusters=10, seed=7, span_days=2, funnel=True)


def resources(settings: Settings, mode: str = "in_process") -> dict[str, Any]:
    return {
        "streamrec": StreamrecResource.from_settings(settings),
        "steps": StepRunner(mode=mode, poll_s=0.5),  # type: ignore[arg-type]
        "ranking_promotion_policy": RankingPromotionPolicy(),
    }


def metadata(result: dg.ExecuteInProcessResult, key: str) -> dict[str, Any]:
    """The metadata values of the materialisation of ``key`` in ``result``."""
    (event,) = [m for m in result.get_asset_materialization_events() if m.asset_key == dg.AssetKey(key)]
    return {name: value.value for name, value in event.materialization.metadata.items()}


def test_ranking_examples_model_and_gate_record_their_versions(mini_cluster: Settings, tmp_path) -> None:
    from serving.registry import served_version
    from training.common import tracking

    tag = uuid.uuid4().hex[:8]
    settings = get_settings(
        home=tmp_path,
        registered_model=f"workflows-retrieval-{tag}",
        registered_ranking_model=f"workflows-ranking-{tag}",
        train_workers=1,
    )
    start_ms = int(time.time() * 1000) - 3 * 86_400_000
    silver_version = append_synthetic(settings, SyntheticConfig(**SYNTHETIC, start_ms=start_ms))  # type: ignore[arg-type]
    instance = dg.DagsterInstance.ephemeral()

    built = dg.materialize([ranking_examples], resources=resources(settings), instance=instance)
    examples = metadata(built, "ranking_examples")
    assert examples["delta_version"] == delta_version(settings, RANKING_EXAMPLES_TABLE)
    assert examples["silver_version"] == silver_version and examples["ran_as"] == "in_process"
    assert examples["build_mode"] == "full" and "no recorded build" in examples["full_build_because"]
    assert examples["rows"] == row_count(settings, RANKING_EXAMPLES_TABLE) == examples["rows_written"]
    splits = {split: examples[f"rows.{split}"] for split in ("train", "validation", "test")}
    assert sum(splits.values()) == examples["rows"] and min(splits.values()) > 0
    assert examples["window_ms"] == 3_600_000 and examples["max_len"] == 50
    for table in (ITEM_VOCAB_TABLE, USER_SEQUENCES_TABLE, ITEM_STATS_TABLE, RANKING_EXAMPLES_TABLE):
        assert examples[f"version.{table}"] == delta_version(settings, table) is not None

    config = RankingModelConfig(workers=1, train={"epochs": 1, "batch_size": 64})
    trained = dg.materialize(
        [ranking_model, ranking_promotion],
        resources=resources(settings),
        instance=instance,
        run_config=dg.RunConfig(ops={"ranking_model": config}),
    )
    model = metadata(trained, "ranking_model")
    assert model["registered_model"] == settings.mlflow.registered_ranking_model and model["model_version"] == "1"
    assert model["model"] == "ranker" and model["epochs_run"] == 1 and model["best_epoch"] == 1
    assert model["version.features/ranking_examples"] == examples["delta_version"]
    assert model["version.features/item_vocab"] == examples["version.features/item_vocab"]
    assert 0.5 < model["best_val_auc_click"] < 1.0 and 0.0 < model["test_auc_click"] < 1.0
    assert model["mlflow_run"] == tracking.ui_url(settings, model["mlflow_run_id"])  # the model-training view
    run = tracking.client(settings).get_run(model["mlflow_run_id"])
    assert run.data.tags["registered_version"] == "1" and run.data.tags["task"] == "ranking"

    # The gate in the same run: the version ranking_model registered, the first one, promoted.
    gate = metadata(trained, "ranking_promotion")
    assert (gate["decision"], gate["candidate_version"], gate["production_after"]) == ("first", "1", "1")
    assert gate["registered_model"] == settings.mlflow.registered_ranking_model and gate["split"] == "validation"
    assert served_version(settings, settings.mlflow.registered_ranking_model) == "1"
    assert served_version(settings) is None  # the retrieval alias is not touched
    assert gate["candidate_val_auc_click"] == pytest.approx(model["best_val_auc_click"], abs=1e-3)
    assert gate["version.features/ranking_examples"] == examples["delta_version"]
    tags = tracking.client(settings).get_run(gate["candidate_run_id"]).data.tags
    assert tags["gate_decision"] == "first"

    again = dg.materialize(
        [ranking_promotion],
        resources=resources(settings),
        instance=instance,
        run_config=dg.RunConfig(ops={"ranking_promotion": EvaluationConfig(candidate_version="1")}),
    )
    outcome = metadata(again, "ranking_promotion")
    assert outcome["decision"] == "unchanged" and not outcome["promoted"] and outcome["production_after"] == "1"

    # New events; the incremental build with the RankingSpec runs as a Ray job.
    late_ms = int(time.time() * 1000) - 3_600_000 * 3
    more = SyntheticConfig(**{**SYNTHETIC, "events": 300, "seed": 8, "span_days": 0.05}, start_ms=late_ms)  # type: ignore[arg-type]
    newer_silver = append_synthetic(settings, more, first_offset=10_000)
    assert newer_silver == delta_version(settings, SILVER_TABLE)
    rebuilt = metadata(
        dg.materialize([ranking_examples], resources=resources(settings, "ray_job"), instance=instance),
        "ranking_examples",
    )
    assert rebuilt["ran_as"] == "ray_job" and rebuilt["ray_job_id"].startswith("streamrec-features-")
    assert rebuilt["build_mode"] == "incremental" and rebuilt["silver_version"] == newer_silver
    assert rebuilt["delta_version"] == delta_version(settings, RANKING_EXAMPLES_TABLE) > examples["delta_version"]
    assert rebuilt["rows"] > examples["rows"]

"""The loop's assets materialised in-process on the session's real broker, Ray head and MLflow:
ingest (Spark, in-process) -> features (in-process, then as a Ray job) -> retrieval model (Ray Train) ->
evaluation -> promotion gate, each recording its Delta and MLflow versions as metadata.

Small synthetic data on a topic and a registered model name of their own. The gate refuses a
worse candidate (a copy of the trained model with its item rows shuffled) and accepts a better
one; the registered-model sensor requests one gate run per new version.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from infra.settings import Settings, get_settings
from ingestion.producer import encode_event, produce, with_bad_records
from ingestion.schema import BRONZE_TABLE, QUARANTINE_TABLE, SILVER_TABLE
from ingestion.synthetic import SyntheticConfig, generate_events
from workflows.assets import feature_build, ingest, retrieval_evaluation, retrieval_model, retrieval_promotion
from workflows.assets.promotion import EvaluationConfig
from workflows.assets.training import RetrievalTrainConfig
from workflows.checks import quarantine_rate, silver_freshness, user_sequences_row_drift
from workflows.lineage import delta_version, row_count
from workflows.resources import PromotionPolicy, QualityThresholds, StepRunner, StreamrecResource
from workflows.sensors import registered_model_sensor

EVENTS = 6_000
BAD_FRACTION = 0.02
SYNTHETIC = dict(users=120, items=300, events=EVENTS, clusters=10, seed=7, span_days=2)
TINY = {"encoder": {"kind": "hstu", "dim": 32, "max_len": 50}, "batch_size": 32, "patience": 0}


@dataclass
class Loop:
    settings: Settings
    instance: dg.DagsterInstance
    landed: dg.ExecuteInProcessResult
    features: dg.ExecuteInProcessResult
    trained: dg.ExecuteInProcessResult


def resources(settings: Settings, mode: str = "in_process") -> dict[str, Any]:
    return {
        "streamrec": StreamrecResource.from_settings(settings),
        "steps": StepRunner(mode=mode, poll_s=0.5),  # type: ignore[arg-type]
        "quality": QualityThresholds(),
        "promotion_policy": PromotionPolicy(),
    }


def metadata(result: dg.ExecuteInProcessResult, key: str) -> dict[str, Any]:
    """The metadata values of the materialisation of ``key`` in ``result``."""
    (event,) = [m for m in result.get_asset_materialization_events() if m.asset_key == dg.AssetKey(key)]
    return {name: value.value for name, value in event.materialization.metadata.items()}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def create_topic(settings: Settings) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap, request_timeout_ms=10_000)
    try:
        admin.create_topics([NewTopic(settings.kafka.topic, 4, 1)])
    finally:
        admin.close()


@pytest.fixture(scope="module")
def loop(mini_cluster: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    tag = uuid.uuid4().hex[:8]
    settings = get_settings(
        home=tmp_path_factory.mktemp("workflows-home"),
        topic=f"workflows-{tag}",
        registered_model=f"workflows-test-{tag}",
        train_workers=1,
    )
    create_topic(settings)
    start_ms = int(time.time() * 1000) - 3 * 86_400_000  # the stream ends about a day ago
    events = generate_events(SyntheticConfig(**SYNTHETIC, start_ms=start_ms))  # type: ignore[arg-type]
    sent = produce(with_bad_records(events, BAD_FRACTION, settings, seed=7), settings, show_progress=False)
    assert sent.sent == EVENTS and not sent.failed
    instance = dg.DagsterInstance.ephemeral()
    landed = dg.materialize(
        [ingest, quarantine_rate, silver_freshness], resources=resources(settings), instance=instance
    )
    features = dg.materialize(
        [feature_build, user_sequences_row_drift], resources=resources(settings), instance=instance
    )
    config = RetrievalTrainConfig(train={**TINY, "epochs": 2})
    trained = dg.materialize(
        [retrieval_model],
        resources=resources(settings),
        instance=instance,
        run_config=dg.RunConfig(ops={"retrieval_model": config}),
    )
    yield Loop(settings, instance, landed, features, trained)


def test_ingest_records_delta_versions_offsets_and_passes_its_checks(loop: Loop) -> None:
    settings = loop.settings
    assert loop.landed.success
    bronze = metadata(loop.landed, "bronze_events")
    quarantine = metadata(loop.landed, "quarantine_events")
    silver = metadata(loop.landed, "silver_events")
    assert bronze["delta_version"] == delta_version(settings, BRONZE_TABLE)
    assert silver["delta_version"] == delta_version(settings, SILVER_TABLE)
    assert quarantine["delta_version"] == delta_version(settings, QUARANTINE_TABLE)
    assert bronze["rows"] + quarantine["rows"] == EVENTS
    assert quarantine["rows"] > 0 and bronze["records_valid"] == bronze["rows"]
    assert bronze["ran_as"] == "in_process"
    assert sum(bronze["kafka_high_watermarks"].values()) == EVENTS  # bronze holds the topic up to these offsets
    assert silver["bronze_version"] == bronze["delta_version"]  # silver caught up with this bronze version
    assert silver["rows"] == row_count(settings, SILVER_TABLE) > 0
    found = checks(loop.landed)
    assert found["quarantine_rate"].passed
    assert 0.0 < found["quarantine_rate"].metadata["quarantine_rate"].value < QualityThresholds().quarantine_max_rate
    assert found["silver_freshness"].passed
    assert 12 < found["silver_freshness"].metadata["age_hours"].value < 48

    strict = dg.materialize(
        [ingest, quarantine_rate],
        selection=dg.AssetSelection.checks(quarantine_rate),
        resources={**resources(settings), "quality": QualityThresholds(quarantine_max_rate=0.001)},
        instance=loop.instance,
    )
    (verdict,) = strict.get_asset_check_evaluations()
    assert not verdict.passed and verdict.severity == dg.AssetCheckSeverity.ERROR


def test_features_record_the_silver_version_they_reflect(loop: Loop) -> None:
    assert loop.features.success
    silver_version = metadata(loop.landed, "silver_events")["delta_version"]
    for key in ("item_vocab", "user_sequences", "item_stats"):
        found = metadata(loop.features, key)
        assert found["silver_version"] == silver_version
        assert found["delta_version"] == delta_version(loop.settings, f"features/{key}")
        assert found["build_mode"] == "full" and found["ran_as"] == "in_process"  # the first build of a lake
        assert found["rows_written"] == found["rows"] > 0
    assert checks(loop.features)["user_sequences_row_drift"].passed  # a first version has nothing to drift from


def test_new_events_reach_the_features_through_a_ray_job(loop: Loop) -> None:
    """More events, ingested again; the incremental build runs as a Ray job on the session's Ray head."""
    settings = loop.settings
    late_ms = int(time.time() * 1000) - 3_600_000
    more = generate_events(SyntheticConfig(**{**SYNTHETIC, "events": 300, "seed": 8}, start_ms=late_ms))  # type: ignore[arg-type]
    assert produce(map(encode_event, more), settings, show_progress=False).sent == 300
    before = metadata(loop.features, "user_sequences")
    landed = dg.materialize([ingest], resources=resources(settings), instance=loop.instance)
    silver = metadata(landed, "silver_events")
    assert silver["delta_version"] > metadata(loop.landed, "silver_events")["delta_version"]
    built = dg.materialize(
        [feature_build, user_sequences_row_drift], resources=resources(settings, "ray_job"), instance=loop.instance
    )
    for key in ("item_vocab", "user_sequences", "item_stats"):
        found = metadata(built, key)
        assert found["ran_as"] == "ray_job" and found["ray_job_id"].startswith("streamrec-features-")
        assert found["build_mode"] == "incremental" and found["silver_version"] == silver["delta_version"]
        assert found["delta_version"] == delta_version(settings, f"features/{key}")
    sequences = metadata(built, "user_sequences")
    assert sequences["delta_version"] > before["delta_version"]
    drift = checks(built)["user_sequences_row_drift"]
    assert drift.passed and drift.metadata["previous_rows"].value == before["rows"]


def test_a_failed_ray_job_fails_the_step_with_its_log_tail(mini_cluster: Settings, tmp_path: Path) -> None:
    empty = get_settings(home=tmp_path)  # no silver table: `streamrec features build` exits 1
    result = dg.materialize([feature_build], resources=resources(empty, "ray_job"), raise_on_error=False)
    assert not result.success
    (failure,) = [event for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE]
    data = failure.step_failure_data
    assert data.user_failure_data is not None
    assert "failed" in (data.user_failure_data.description or "")
    tail = data.user_failure_data.metadata["log_tail"].value
    assert "no silver/events table" in tail


def test_training_records_the_model_version_run_and_feature_versions(loop: Loop) -> None:
    from training.common import tracking

    assert loop.trained.success
    found = metadata(loop.trained, "retrieval_model")
    assert found["model_version"] == "1" and found["warm_start_from"] == "none (from scratch)"
    run = tracking.client(loop.settings).get_run(found["mlflow_run_id"])
    assert run.data.tags["registered_version"] == "1"
    for key in ("item_vocab", "user_sequences"):
        assert found[f"version.features/{key}"] == metadata(loop.features, key)["delta_version"]
    assert found["mlflow_run"] == tracking.ui_url(loop.settings, found["mlflow_run_id"])  # the model-training view


def register_shuffled_copy(settings: Settings, version: str, directory: Path) -> str:
    """A worse candidate: ``version`` with its item rows permuted, registered as a new version."""
    import torch

    from training.common import tracking
    from training.common.model import PLAIN_WEIGHT
    from training.retrieval.io import read_info, read_weights, save_model

    with tracking.downloaded_version(settings, version) as source:
        info, weights = read_info(source), read_weights(source)
    rows = weights[PLAIN_WEIGHT]
    order = torch.randperm(rows.shape[0] - 1, generator=torch.Generator().manual_seed(0)) + 1
    weights[PLAIN_WEIGHT] = torch.cat([rows[:1], rows[order]])
    save_model(directory / "model", info, weights)
    run_id = tracking.start_run(
        settings, f"shuffled-copy-of-v{version}", params={}, tags={"model": "shuffled"},
        feature_versions=info.feature_versions,
    )  # fmt: skip
    tracking.log_artifacts(settings, run_id, directory)
    tracking.client(settings).set_terminated(run_id, "FINISHED")
    return tracking.register(settings, run_id, "model", tags={"model": "shuffled"})


def gate(loop: Loop, candidate: str = "") -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [retrieval_evaluation, retrieval_promotion],
        resources=resources(loop.settings),
        instance=loop.instance,
        run_config=dg.RunConfig(ops={"retrieval_evaluation": EvaluationConfig(candidate_version=candidate)}),
    )


def sensor_tick(loop: Loop, cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=loop.instance, cursor=cursor, resources={"streamrec": StreamrecResource.from_settings(loop.settings)}
    )
    result = registered_model_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def test_the_gate_promotes_the_first_refuses_a_worse_and_accepts_a_better_candidate(loop: Loop, tmp_path: Path) -> None:
    from serving.registry import promote, served_version
    from training.common import tracking
    from training.retrieval.version_eval import evaluate_version

    settings = loop.settings
    first = gate(loop)  # candidate '' = the newest registered version: 1
    outcome = metadata(first, "retrieval_promotion")
    assert (outcome["decision"], outcome["candidate_version"], outcome["production_after"]) == ("first", "1", "1")
    assert served_version(settings) == "1"
    evaluation = metadata(first, "retrieval_evaluation")
    assert evaluation["production_version"] is None
    # The gate's evaluation is `streamrec evaluate 1 --split validation` at the model's own versions.
    assert evaluation["candidate_val_ndcg_10"] == pytest.approx(
        evaluate_version(settings, "1", "validation")[0]["val_ndcg_10"]
    )

    worse = register_shuffled_copy(settings, "1", tmp_path)
    ticked = sensor_tick(loop, None)
    (request,) = ticked.run_requests or []
    assert request.tags["streamrec/candidate_version"] == worse and ticked.cursor == worse
    assert not sensor_tick(loop, ticked.cursor).run_requests  # never twice for one version

    refused = gate(loop, worse)
    evaluation = metadata(refused, "retrieval_evaluation")
    assert evaluation["production_version"] == "1"
    assert evaluation["version.features/user_sequences"] == metadata(loop.features, "user_sequences")["delta_version"]
    outcome = metadata(refused, "retrieval_promotion")
    assert outcome["decision"] == "refused" and not outcome["promoted"]
    assert outcome["production_after"] == "1" and served_version(settings) == "1"
    assert "not above the threshold" in outcome["reason"]
    run = tracking.client(settings).get_run(outcome["candidate_run_id"])
    assert run.data.tags["gate_decision"] == "refused" and run.data.tags["gate_production_version"] == "1"
    assert run.data.metrics["gate_candidate_val_ndcg_10"] < run.data.metrics["gate_production_val_ndcg_10"]

    promote(settings, worse)  # a bad version reached production by hand: the trained one beats it
    accepted = gate(loop, "1")
    outcome = metadata(accepted, "retrieval_promotion")
    assert outcome["decision"] == "promoted" and outcome["production_before"] == worse
    assert served_version(settings) == "1"
    run = tracking.client(settings).get_run(outcome["candidate_run_id"])
    assert run.data.tags["gate_decision"] == "promoted"
    assert run.data.metrics["gate_candidate_val_ndcg_10"] > run.data.metrics["gate_threshold_val_ndcg_10"]


def test_training_warm_starts_from_production(loop: Loop) -> None:
    from serving.registry import promote, served_version
    from training.common import tracking
    from workflows.rounds import TrainOptions, round_train_config, warm_start_round

    settings = loop.settings
    promote(settings, "1")
    config = RetrievalTrainConfig(train={"epochs": 1, "encoder": {"kind": "sasrec"}})  # from-scratch runs only
    result = dg.materialize(
        [retrieval_model],
        resources=resources(settings),
        instance=loop.instance,
        run_config=dg.RunConfig(ops={"retrieval_model": config}),
    )
    found = metadata(result, "retrieval_model")
    assert found["warm_start_from"] == "1" and found["model"] == "hstu"
    assert int(found["model_version"]) > 1

    # The same round without Dagster (what a script or the demo calls): warm start, then the gate.
    options = TrainOptions(round_train_config({"epochs": 1, "batch_size": 32}))
    round_ = warm_start_round(settings, options, log=lambda _: None)
    assert round_.warm_start_from == "1" and int(round_.trained.model_version) > int(found["model_version"])
    assert round_.gate.comparison.production_version == "1"
    assert round_.gate.production_after == served_version(settings)
    assert round_.gate.production_after == (round_.trained.model_version if round_.gate.decision.promote else "1")
    tags = tracking.client(settings).get_run(round_.trained.run_id).data.tags
    assert tags["gate_decision"] == round_.gate.decision.label

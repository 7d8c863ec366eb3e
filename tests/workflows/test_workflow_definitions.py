"""The Dagster definitions load, validate and resolve every job, schedule, sensor and check."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg

from infra.settings import get_settings
from workflows.resources import StreamrecResource, resources_from_settings

JOBS = {
    "ingest_job": {"bronze_events", "quarantine_events", "silver_events"},
    "features_job": {"item_vocab", "user_sequences", "item_stats"},
    "warm_start_training_job": {"retrieval_model"},
    "full_retraining_job": {"retrieval_model"},
    "promotion_job": {"retrieval_evaluation", "retrieval_promotion"},
    "loop_job": {
        "bronze_events", "quarantine_events", "silver_events", "item_vocab", "user_sequences", "item_stats",
        "retrieval_model", "retrieval_evaluation", "retrieval_promotion",
    },
    "ranking_job": {"ranking_examples", "ranking_model", "ranking_promotion"},
}  # fmt: skip


def test_definitions_load_validate_and_resolve_every_job() -> None:
    from workflows.definitions import defs

    dg.Definitions.validate_loadable(defs)
    for name, assets in JOBS.items():
        job = defs.resolve_job_def(name)
        assert {key.to_user_string() for key in job.asset_layer.executable_asset_keys} == assets, name
        assert job.executor_def.name == dg.in_process_executor.name, name  # no interpreter per step
    assert {schedule.name: schedule.job_name for schedule in defs.schedules} == {
        "hourly_warm_start_training": "warm_start_training_job",
        "daily_full_retraining": "full_retraining_job",
        "ingest_every_15_minutes": "ingest_job",
        "daily_ranking_training": "ranking_job",
    }
    sensors = {sensor.name: sensor for sensor in defs.sensors}
    assert sensors["silver_events_sensor"].job_name == "features_job"
    assert sensors["registered_model_sensor"].job_name == "promotion_job"
    for name in ("hourly_warm_start_training", "daily_full_retraining", "ingest_every_15_minutes",
                 "daily_ranking_training"):  # fmt: skip
        assert defs.resolve_schedule_def(name).default_status == dg.DefaultScheduleStatus.STOPPED
    graph = defs.resolve_asset_graph()
    checks = {(key.asset_key.to_user_string(), key.name) for key in graph.asset_check_keys}
    assert checks == {
        ("quarantine_events", "quarantine_rate"),
        ("silver_events", "silver_freshness"),
        ("user_sequences", "user_sequences_row_drift"),
    }
    # Each job runs the checks of the assets it materialises.
    assert "quarantine_events_quarantine_rate" in defs.resolve_job_def("ingest_job").graph.node_dict
    assert "user_sequences_user_sequences_row_drift" in defs.resolve_job_def("features_job").graph.node_dict
    # Lineage: the graph runs from the topic to the gate.
    upstream = {key.to_user_string(): {dep.to_user_string() for dep in graph.get(key).parent_keys}
                for key in graph.get_all_asset_keys()}  # fmt: skip
    assert upstream["bronze_events"] == {"user_actions_topic"}
    assert upstream["silver_events"] == {"bronze_events"}
    assert upstream["user_sequences"] == {"silver_events", "item_vocab"}
    assert upstream["retrieval_model"] == {"item_vocab", "user_sequences"}
    assert upstream["retrieval_promotion"] == {"retrieval_evaluation"}
    assert upstream["ranking_examples"] == {"silver_events", "item_vocab"}
    assert upstream["ranking_model"] == {"ranking_examples", "item_vocab"}
    assert upstream["ranking_promotion"] == {"ranking_model"}
    assert {key.to_user_string() for key in graph.get(dg.AssetKey("ranking_examples")).child_keys} == {"ranking_model"}


def test_ranking_configs_default_to_the_ranking_packages_defaults() -> None:
    """The Dagster configs default to the packages' own defaults (the definitions load without torch)."""
    from features.ranking import RankingSpec
    from training.ranking.config import RankingTrainConfig
    from workflows.assets.features import RankingExamplesConfig
    from workflows.assets.training import RankingModelConfig
    from workflows.promotion import RANKING_GATE
    from workflows.resources import RankingPromotionPolicy
    from workflows.rounds import RankingOptions

    assert RankingOptions().config == RankingModelConfig().options().config == RankingTrainConfig()
    assert RankingOptions().workers == RankingModelConfig().workers == 0
    spec, examples = RankingSpec(), RankingExamplesConfig()
    assert (examples.window_s * 1000, examples.max_len) == (spec.window_ms, spec.max_len)
    assert RankingPromotionPolicy().policy() == RANKING_GATE
    assert RANKING_GATE.key == "val_auc_click"


def test_definitions_load_without_the_heavy_libraries() -> None:
    """The code server imports the definitions on every start: no torch, Ray, Spark or MLflow then."""
    code = (
        "import sys; import workflows.definitions; "
        "print(sorted(m for m in ('torch', 'ray', 'pyspark', 'mlflow') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_resources_reproduce_the_settings_exactly(tmp_path) -> None:
    settings = get_settings(home=tmp_path, topic="t-1", registered_model="m-1", train_workers=1, external=["kafka"])
    resource = StreamrecResource.from_settings(settings)
    assert resource.settings() == settings
    assert resource.topic == "t-1" and resource.registered_model == "m-1"  # shown in the UI as fields
    resources = resources_from_settings(get_settings(home=tmp_path, dagster_steps="ray_job"))
    assert resources["steps"].mode == "ray_job"
    assert set(resources) == {"streamrec", "steps", "quality", "promotion_policy", "ranking_promotion_policy"}


def test_the_registered_model_sensor_gates_a_waiting_candidate_once_per_newer_features(tmp_path, monkeypatch) -> None:
    """No new version: the candidate the freshness gate left waiting is requested again, with a
    run key naming the user_sequences version, so each newer feature build gives it one more
    gate run and none runs twice; with no candidate waiting the sensor skips."""
    from features.reader import FeatureVersions
    from workflows import promotion
    from workflows.sensors import registered_model_sensor

    settings = get_settings(home=tmp_path, registered_model="m-1")
    monkeypatch.setattr(promotion, "registered_versions", lambda settings, model=None: [1, 2, 3])
    waiting: list[str | None] = ["3"]
    monkeypatch.setattr(promotion, "pending_candidate", lambda settings: waiting[0])
    sequences = [7]
    monkeypatch.setattr(
        "features.reader.latest_versions",
        lambda settings: FeatureVersions(item_vocab=1, user_sequences=sequences[0]),
    )

    def tick() -> dg.SensorResult:
        context = dg.build_sensor_context(
            cursor="3", resources={"streamrec": StreamrecResource.from_settings(settings)}
        )
        result = registered_model_sensor(context)
        assert isinstance(result, dg.SensorResult)
        return result

    (request,) = tick().run_requests or []
    assert request.run_key == "m-1-v3-pending-at-user_sequences-7"
    assert request.run_config["ops"]["retrieval_evaluation"]["config"]["candidate_version"] == "3"
    sequences[0] = 8
    (again,) = tick().run_requests or []
    assert again.run_key == "m-1-v3-pending-at-user_sequences-8"
    waiting[0] = None
    skipped = tick()
    assert not skipped.run_requests and skipped.skip_reason and "none waiting" in skipped.skip_reason.skip_message

"""The settings object: defaults, environment, YAML, validation, derived values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from infra.settings import ServeSettings, Settings, flat_names, get_settings

# Every environment variable that named a setting before the settings had sections (the flat
# fields of commit 9b56e8f), the section field it sets, a value as the environment spells it,
# and that value parsed. Each one must keep working.
ENVIRONMENT: list[tuple[str, str, str, Any]] = [
    ("STREAMREC_HOME", "home", "/srv/streamrec", Path("/srv/streamrec")),
    ("STREAMREC_PROFILE", "profile", "cluster", "cluster"),
    ("STREAMREC_LAKE_URI", "lake.uri", "s3://bucket/lake", "s3://bucket/lake"),
    ("STREAMREC_KAFKA_BOOTSTRAP", "kafka.bootstrap", "b1:9092,b2:9092", "b1:9092,b2:9092"),
    ("STREAMREC_TOPIC", "kafka.topic", "actions", "actions"),
    ("STREAMREC_TOPIC_PARTITIONS", "kafka.topic_partitions", "12", 12),
    ("STREAMREC_MLFLOW_TRACKING_URI", "mlflow.tracking_uri", "https://mlflow.example.com", "https://mlflow.example.com"),
    ("STREAMREC_RAY_ADDRESS", "ray.address", "ray://head:10001", "ray://head:10001"),
    ("STREAMREC_RAY_DASHBOARD_PORT", "ray.dashboard_port", "8266", 8266),
    ("STREAMREC_RAY_CLIENT_PORT", "ray.client_port", "10002", 10002),
    ("STREAMREC_RAY_NUM_CPUS", "ray.num_cpus", "3", 3),
    ("STREAMREC_RAY_AUTH", "ray.auth", "disabled", "disabled"),
    ("STREAMREC_RAY_AUTH_TOKEN_FILE", "ray.auth_token_file", "/run/ray-token", "/run/ray-token"),
    ("STREAMREC_SPARK_MASTER", "spark.master", "spark://spark:7077", "spark://spark:7077"),
    ("STREAMREC_SPARK_DRIVER_MEMORY", "spark.driver_memory", "8g", "8g"),
    ("STREAMREC_SPARK_SHUFFLE_PARTITIONS", "spark.shuffle_partitions", "16", 16),
    ("STREAMREC_RAY_WORKER_NUM_CPUS", "ray.worker_num_cpus", "2", 2),
    ("STREAMREC_SPARK_MASTER_PORT", "spark.master_port", "7177", 7177),
    ("STREAMREC_SPARK_MASTER_WEBUI_PORT", "spark.master_webui_port", "8180", 8180),
    ("STREAMREC_SPARK_WORKER_WEBUI_PORT", "spark.worker_webui_port", "8181", 8181),
    ("STREAMREC_SPARK_WORKER_CORES", "spark.worker_cores", "2", 2),
    ("STREAMREC_SPARK_WORKER_MEMORY", "spark.worker_memory", "3g", "3g"),
    ("STREAMREC_SERVE_HOST", "serve.host", "0.0.0.0", "0.0.0.0"),
    ("STREAMREC_SERVE_PORT", "serve.port", "8001", 8001),
    ("STREAMREC_SERVE_INGRESS", "serve.ingress", "python", "python"),
    ("STREAMREC_DAGSTER_PORT", "dagster.port", "3001", 3001),
    ("STREAMREC_DAGSTER_HOST", "dagster.host", "dagster.internal", "dagster.internal"),
    ("STREAMREC_DAGSTER_ENABLED", "dagster.enabled", "false", False),
    ("STREAMREC_DAGSTER_CONTINUAL", "dagster.continual", "true", True),
    ("STREAMREC_DAGSTER_STEPS", "dagster.steps", "ray_job", "ray_job"),
    ("STREAMREC_DAGSTER_JOB_COMMAND", "dagster.job_command", "python -m infra.cli", "python -m infra.cli"),
    ("STREAMREC_EXTERNAL", "external", "kafka, mlflow", ["kafka", "mlflow"]),
    ("STREAMREC_START_TIMEOUT_S", "start_timeout_s", "30.5", 30.5),
    ("STREAMREC_INGEST_MAX_EVENT_BYTES", "ingest.max_event_bytes", "1024", 1024),
    ("STREAMREC_INGEST_FUTURE_TOLERANCE_S", "ingest.future_tolerance_s", "60", 60.0),
    ("STREAMREC_INGEST_MAX_RECORDS_PER_TRIGGER", "ingest.max_records_per_trigger", "1000", 1000),
    ("STREAMREC_INGEST_TRIGGER_INTERVAL_S", "ingest.trigger_interval_s", "0.5", 0.5),
    ("STREAMREC_INGEST_STARTING_OFFSETS", "ingest.starting_offsets", "latest", "latest"),
    ("STREAMREC_FEATURES_MAX_LEN", "features.max_len", "50", 50),
    ("STREAMREC_TRAIN_WORKERS", "train.workers", "4", 4),
    ("STREAMREC_TRAIN_CPUS_PER_WORKER", "train.cpus_per_worker", "0.5", 0.5),
    ("STREAMREC_TRAIN_USE_GPU", "train.use_gpu", "1", True),
    ("STREAMREC_TRAIN_MAX_FAILURES", "train.max_failures", "0", 0),
    ("STREAMREC_TRAIN_STORAGE", "train.storage", "s3://bucket/runs", "s3://bucket/runs"),
    ("STREAMREC_TRAIN_FOLLOW_ITEM_HEADROOM", "train.follow_item_headroom", "500", 500),
    ("STREAMREC_TRAIN_FOLLOW_MAX_STEPS", "train.follow_max_steps", "5", 5),
    ("STREAMREC_TRAIN_FOLLOW_REPLAY_RATIO", "train.follow_replay_ratio", "0.5", 0.5),
    ("STREAMREC_TRAIN_FOLLOW_POLL_S", "train.follow_poll_s", "0.2", 0.2),
    ("STREAMREC_MLFLOW_EXPERIMENT", "mlflow.experiment", "nightly", "nightly"),
    ("STREAMREC_REGISTERED_MODEL", "mlflow.registered_model", "retrieval-x", "retrieval-x"),
    ("STREAMREC_REGISTERED_RANKING_MODEL", "mlflow.registered_ranking_model", "ranking-x", "ranking-x"),
    ("STREAMREC_SERVE_MODEL_ALIAS", "serve.model_alias", "canary", "canary"),
    ("STREAMREC_SERVE_REPLICAS", "serve.replicas", "3", 3),
    ("STREAMREC_SERVE_HISTORY_SHARDS", "serve.history_shards", "2", 2),
    ("STREAMREC_SERVE_EXACT_MAX_ITEMS", "serve.exact_max_items", "1000", 1000),
    ("STREAMREC_SERVE_HNSW_M", "serve.hnsw_m", "16", 16),
    ("STREAMREC_SERVE_HNSW_EF_SEARCH", "serve.hnsw_ef_search", "256", 256),
    ("STREAMREC_SERVE_PREFIX_DIMS", "serve.prefix_dims", "32", 32),
    ("STREAMREC_SERVE_PREFIX_CODEC", "serve.prefix_codec", "flat", "flat"),
    ("STREAMREC_SERVE_RESCORE", "serve.rescore", "500", 500),
    ("STREAMREC_SERVE_MAX_K", "serve.max_k", "100", 100),
    ("STREAMREC_SERVE_MAX_HISTORY_ITEMS", "serve.max_history_items", "500", 500),
    ("STREAMREC_SERVE_MAX_BODY_BYTES", "serve.max_body_bytes", "4096", 4096),
    ("STREAMREC_SERVE_MAX_ONGOING_REQUESTS", "serve.max_ongoing_requests", "64", 64),
    ("STREAMREC_SERVE_MAX_QUEUED_REQUESTS", "serve.max_queued_requests", "32", 32),
    ("STREAMREC_SERVE_BATCH_MAX_SIZE", "serve.batch_max_size", "8", 8),
    ("STREAMREC_SERVE_BATCH_WAIT_S", "serve.batch_wait_s", "0.01", 0.01),
    ("STREAMREC_SERVE_MODEL_POLL_S", "serve.model_poll_s", "5", 5.0),
    ("STREAMREC_SERVE_DELTA_POLL_S", "serve.delta_poll_s", "0", 0.0),
    ("STREAMREC_SERVE_DELTA_REBUILD_FRACTION", "serve.delta_rebuild_fraction", "0.5", 0.5),
    ("STREAMREC_SERVE_LRUREC_STATE_USERS", "serve.lrurec_state_users", "0", 0),
    ("STREAMREC_SERVE_RANK_CANDIDATES", "serve.rank_candidates", "100", 100),
    ("STREAMREC_SERVE_RANK_MAX_CANDIDATES", "serve.rank_max_candidates", "2000", 2000),
    ("STREAMREC_SERVE_BLEND_WEIGHTS", "serve.blend_weights", '{"click": 1.5}', {"click": 1.5}),
]  # fmt: skip


def read(settings: Settings, path: str) -> Any:
    """The value at a dotted path (``serve.port``)."""
    value: Any = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.upper().startswith("STREAMREC_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_the_list_holds_every_setting() -> None:
    assert sorted(name.removeprefix("STREAMREC_").lower() for name, *_ in ENVIRONMENT) == sorted(flat_names())


@pytest.mark.parametrize(("variable", "path", "raw", "value"), ENVIRONMENT, ids=[row[0] for row in ENVIRONMENT])
def test_each_environment_variable_sets_its_section_field(
    clean_env: pytest.MonkeyPatch, variable: str, path: str, raw: str, value: Any
) -> None:
    assert read(Settings(), path) != value  # the value differs from the default
    clean_env.setenv(variable, raw)
    assert read(Settings(), path) == value


@pytest.mark.parametrize(("variable", "path", "raw", "value"), ENVIRONMENT, ids=[row[0] for row in ENVIRONMENT])
def test_each_flat_yaml_key_sets_its_section_field(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, variable: str, path: str, raw: str, value: Any
) -> None:
    key = variable.removeprefix("STREAMREC_").lower()
    (tmp_path / "streamrec.yaml").write_text(yaml.safe_dump({key: str(value) if isinstance(value, Path) else value}))
    assert read(Settings(), path) == value


def test_nested_yaml_and_nested_keyword_arguments(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "streamrec.yaml").write_text(
        "serve:\n  port: 8001\n  blend_weights: {click: 2.0}\nkafka:\n  topic: nested\ntopic_partitions: 6\n"
    )
    settings = Settings()
    assert (settings.serve.port, settings.serve.blend_weights) == (8001, {"click": 2.0})
    assert (settings.kafka.topic, settings.kafka.topic_partitions) == ("nested", 6)
    assert settings.serve.host == "127.0.0.1"  # the section's other fields keep their defaults

    given = get_settings(serve={"port": 8002}, ray={"num_cpus": 2}, train_workers=3)
    assert (given.serve.port, given.ray.num_cpus, given.train.workers) == (8002, 2, 3)
    assert given.serve.blend_weights == {"click": 2.0}  # a keyword argument overrides one key of the YAML's section
    assert get_settings(serve=ServeSettings(port=8003)).serve.port == 8003


def test_precedence_keyword_then_environment_then_yaml_then_default(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "streamrec.yaml").write_text(
        "serve:\n  port: 8001\n  host: 0.0.0.0\n  max_k: 10\nserve_replicas: 2\ntopic: from-yaml\n"
    )
    clean_env.setenv("STREAMREC_SERVE_PORT", "8100")
    clean_env.setenv("STREAMREC_SERVE_MAX_K", "20")
    clean_env.setenv("STREAMREC_TOPIC", "from-env")
    settings = get_settings(serve_port=8200, kafka={"topic": "from-keyword"})
    assert settings.serve.port == 8200  # keyword over environment over YAML
    assert settings.kafka.topic == "from-keyword"
    assert settings.serve.max_k == 20  # environment over YAML, within the YAML's section
    assert (settings.serve.host, settings.serve.replicas) == ("0.0.0.0", 2)  # YAML over default
    assert settings.serve.batch_max_size == 32  # the default


def test_environment_overrides_yaml(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text("topic: from-yaml\nkafka_bootstrap: broker-1:9092,broker-2:9092\ntopic_partitions: 12\n")
    clean_env.setenv("STREAMREC_CONFIG", str(config))
    clean_env.setenv("STREAMREC_TOPIC", "from-env")
    settings = Settings()
    assert settings.kafka.topic == "from-env"
    assert settings.kafka.topic_partitions == 12
    assert settings.kafka.hosts == [("broker-1", 9092), ("broker-2", 9092)]
    assert not settings.is_local("kafka")


def test_unknown_and_doubled_names_are_refused(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no setting serve_prot; closest: serve_port"):
        Settings(serve_prot=1)
    with pytest.raises(ValidationError, match="no setting serve.prot; closest: port"):
        Settings(serve={"prot": 1})
    with pytest.raises(ValidationError, match="serve_port: the same setting is given twice"):
        Settings(serve_port=1, serve={"port": 2})
    (tmp_path / "streamrec.yaml").write_text("kafka_topic: t\n")
    with pytest.raises(ValidationError, match="no setting kafka_topic; closest: .*topic"):
        Settings()


def test_flat_dump_round_trip_and_updated(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings(serve_port=8001, topic="t", external=["kafka"])
    flat = settings.flat_dump()
    assert set(flat) == set(flat_names()) and flat["serve_port"] == 8001 and flat["topic"] == "t"
    assert Settings(**flat) == settings
    assert Settings(**settings.model_dump()) == settings  # the nested form (serving's ServeConfig)

    copy = settings.updated(topic="u", serve={"port": 8002})
    assert (copy.kafka.topic, copy.serve.port, copy.serve.host) == ("u", 8002, "127.0.0.1")
    assert (settings.kafka.topic, settings.serve.port) == ("t", 8001)  # the original is unchanged


def test_cli_reads_settings_from_the_environment(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "streamrec.yaml").write_text("serve:\n  port: 8001\n  batch_wait_s: 0.5\n")
    env = {**os.environ, "STREAMREC_SERVE_BATCH_WAIT_S": "0.01", "STREAMREC_TOPIC": "cli-topic"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])  # this checkout's packages
    out = subprocess.run(
        [sys.executable, "-m", "infra.cli", "settings"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert (printed["serve_port"], printed["serve_batch_wait_s"], printed["topic"]) == (8001, 0.01, "cli-topic")


def test_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = Settings()
    assert settings.home == tmp_path / ".streamrec"
    assert settings.lake_root == str(tmp_path / ".streamrec" / "lake")
    assert settings.table_uri("bronze/events") == str(tmp_path / ".streamrec" / "lake" / "bronze" / "events")
    assert settings.kafka.bootstrap == "127.0.0.1:9092"
    assert (settings.kafka.topic, settings.kafka.topic_partitions) == ("user-actions", 4)
    assert settings.mlflow.tracking_uri == "http://127.0.0.1:5000"
    assert settings.spark.master == "local[*]"
    assert (settings.serve.host, settings.serve.port, settings.dagster.port) == ("127.0.0.1", 8000, 3000)
    assert settings.dagster.url == "http://127.0.0.1:3000"
    # Dagster is part of the mini-cluster; the loop's schedules and sensors stay as stored.
    assert (settings.dagster.enabled, settings.dagster.continual) == (True, False)
    assert all(settings.is_local(name) for name in ("kafka", "mlflow", "ray"))


def test_missing_config_file_is_a_clear_error(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("STREAMREC_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        Settings()


def test_remote_addresses_are_external(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings(
        mlflow_tracking_uri="https://mlflow.example.com",
        ray_address="ray://head.example.com:10001",
        lake_uri="s3://bucket/lake/",
    )
    assert not settings.is_local("mlflow")
    assert not settings.is_local("ray")
    assert settings.ray.gcs is None
    assert settings.table_uri("silver/events") == "s3://bucket/lake/silver/events"


def test_external_list_from_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STREAMREC_EXTERNAL", "kafka, mlflow")
    settings = Settings()
    assert settings.external == ["kafka", "mlflow"]
    assert not settings.is_local("kafka") and settings.is_local("ray")


def test_bad_values_are_refused(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="zookeeper"):
        Settings(external=["zookeeper"])
    with pytest.raises(ValidationError):
        Settings(topic_partitions=0)
    with pytest.raises(ValidationError):
        Settings(serve={"port": "not a port"})
    with pytest.raises(ValidationError):
        Settings(no_such_setting=1)


def test_cluster_profile_uses_its_standalone_spark_and_extra_nodes(clean_env: pytest.MonkeyPatch) -> None:
    from infra.components import all_components

    local = Settings()
    assert [component.name for component in all_components(local)] == ["kafka", "mlflow", "ray", "dagster"]
    assert local.spark.master == "local[*]" and local.spark.on_this_machine

    cluster = Settings(profile="cluster", spark_master_port=7177)
    assert cluster.spark.master == "spark://127.0.0.1:7177"
    assert [component.name for component in all_components(cluster)][3:] == [
        "ray-worker",
        "spark-master",
        "spark-worker",
        "dagster",  # the scheduler comes last: its runs use the others
    ]
    assert cluster.is_local("spark-master") and cluster.is_local("ray-worker")

    remote = Settings(profile="cluster", spark_master="spark://spark.example.com:7077")
    assert remote.spark.master == "spark://spark.example.com:7077"  # an explicit master is kept
    assert not remote.is_local("spark-master") and not remote.spark.on_this_machine

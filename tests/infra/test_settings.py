"""The settings object: defaults, environment, YAML, validation, derived values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from infra.settings import Settings

ALL_VARS = [
    "STREAMREC_HOME", "STREAMREC_KAFKA_BOOTSTRAP", "STREAMREC_MLFLOW_TRACKING_URI", "STREAMREC_RAY_ADDRESS",
    "STREAMREC_RAY_DASHBOARD_PORT", "STREAMREC_RAY_CLIENT_PORT", "STREAMREC_SERVE_PORT", "STREAMREC_DAGSTER_PORT",
    "STREAMREC_EXTERNAL", "STREAMREC_LAKE_URI", "STREAMREC_CONFIG", "STREAMREC_TOPIC",
]  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ALL_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = Settings()
    assert settings.home == tmp_path / ".streamrec"
    assert settings.lake == str(tmp_path / ".streamrec" / "lake")
    assert settings.table_uri("bronze/events") == str(tmp_path / ".streamrec" / "lake" / "bronze" / "events")
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert (settings.topic, settings.topic_partitions) == ("user-actions", 4)
    assert settings.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert settings.spark_master == "local[*]"
    assert (settings.serve_host, settings.serve_port, settings.dagster_port) == ("127.0.0.1", 8000, 3000)
    assert all(settings.is_local(name) for name in ("kafka", "mlflow", "ray"))


def test_environment_overrides_yaml(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text("topic: from-yaml\nkafka_bootstrap: broker-1:9092,broker-2:9092\ntopic_partitions: 12\n")
    clean_env.setenv("STREAMREC_CONFIG", str(config))
    clean_env.setenv("STREAMREC_TOPIC", "from-env")
    settings = Settings()
    assert settings.topic == "from-env"
    assert settings.topic_partitions == 12
    assert settings.kafka_hosts == [("broker-1", 9092), ("broker-2", 9092)]
    assert not settings.is_local("kafka")


def test_default_yaml_file_in_working_directory(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "streamrec.yaml").write_text("serve_port: 8100\n")
    assert Settings().serve_port == 8100


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
    assert settings.ray_gcs is None
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
        Settings(no_such_setting=1)


def test_cluster_profile_uses_its_standalone_spark_and_extra_nodes(clean_env: pytest.MonkeyPatch) -> None:
    from infra.components import all_components

    local = Settings()
    assert [component.name for component in all_components(local)] == ["kafka", "mlflow", "ray"]
    assert local.spark_master == "local[*]" and local.spark_on_this_machine

    cluster = Settings(profile="cluster", spark_master_port=7177)
    assert cluster.spark_master == "spark://127.0.0.1:7177"
    assert [component.name for component in all_components(cluster)][3:] == [
        "ray-worker",
        "spark-master",
        "spark-worker",
    ]
    assert cluster.is_local("spark-master") and cluster.is_local("ray-worker")

    remote = Settings(profile="cluster", spark_master="spark://spark.example.com:7077")
    assert remote.spark_master == "spark://spark.example.com:7077"  # an explicit master is kept
    assert not remote.is_local("spark-master") and not remote.spark_on_this_machine

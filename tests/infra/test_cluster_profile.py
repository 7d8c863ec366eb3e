"""The cluster profile: the pipeline on multi-process clusters, changed by settings alone.

`STREAMREC_PROFILE=cluster streamrec up` starts, besides MLflow and the Ray head, a Ray worker
node joined with `ray start --address` and a Spark standalone master and worker; the broker
is started separately, as an operator's Kafka would be, and named external. Then the same
commands a user runs on the local profile (produce, ingest, features build, train) run
unchanged, and the tests assert where the work ran: Spark executors on the standalone worker
(the Kafka source and the feature jobs), Ray Train workers on both Ray nodes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from deltalake import DeltaTable

from infra import ray_access
from infra.components import KafkaBroker
from infra.processes import free_port, spawn, stop
from infra.settings import Settings
from ingestion.schema import BRONZE_TABLE

STREAMREC = str(Path(sys.executable).parent / "streamrec")
EVENTS = 3_000

pytestmark = pytest.mark.cluster  # e2e through the cluster_env fixture (tests/conftest.py)


def _settings(env: dict[str, str]) -> Settings:
    values = {key[len("STREAMREC_") :].lower(): value for key, value in env.items() if key.startswith("STREAMREC_")}
    values.setdefault("ray_auth_token_file", "")  # as in ``env``: not the test session's token file
    return Settings(**values)


def _cli(env: dict[str, str], *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([STREAMREC, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"streamrec {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def cluster_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A cluster-profile mini-cluster on private ports; the broker runs on its own."""
    root = tmp_path_factory.mktemp("cluster-profile")
    env = {
        **os.environ,
        "HOME": str(root / "user-home"),
        "STREAMREC_HOME": str(root / "home"),
        "STREAMREC_PROFILE": "cluster",
        "STREAMREC_EXTERNAL": "kafka",
        "STREAMREC_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "STREAMREC_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "STREAMREC_RAY_ADDRESS": f"127.0.0.1:{free_port()}",
        "STREAMREC_RAY_DASHBOARD_PORT": str(free_port()),
        "STREAMREC_RAY_CLIENT_PORT": str(free_port()),
        "STREAMREC_RAY_NUM_CPUS": "1",  # head and worker node 1 CPU each: 2 train workers must spread
        "STREAMREC_RAY_WORKER_NUM_CPUS": "1",
        "STREAMREC_SPARK_MASTER_PORT": str(free_port()),
        "STREAMREC_SPARK_MASTER_WEBUI_PORT": str(free_port()),
        "STREAMREC_SPARK_WORKER_WEBUI_PORT": str(free_port()),
        "STREAMREC_SPARK_WORKER_MEMORY": "1g",
        "COLUMNS": "200",
    }
    env.pop("STREAMREC_SPARK_MASTER", None)  # the profile's default: the standalone master `up` starts
    env.pop("STREAMREC_RAY_AUTH_TOKEN_FILE", None)  # its own head, its own token
    (root / "user-home").mkdir()
    settings = _settings(env)
    broker = KafkaBroker(settings)
    record = spawn(broker.command(), root / "broker.log", root / "broker.pid")
    try:
        _cli(env, "up")
        yield env
    finally:
        subprocess.run([STREAMREC, "down"], env=env, capture_output=True, timeout=120)
        stop(record)


def test_profile_starts_separate_nodes(cluster_env: dict[str, str]) -> None:
    settings = _settings(cluster_env)
    assert settings.spark.master == f"spark://127.0.0.1:{settings.spark.master_port}"
    nodes = [node for node in ray_access.cluster_nodes(settings) if node["state"] == "ALIVE"]
    assert sorted(node["is_head_node"] for node in nodes) == [False, True]
    assert all(node["resources_total"]["CPU"] == 1.0 for node in nodes)


@pytest.fixture(scope="module")
def built(cluster_env: dict[str, str]) -> dict[str, str]:
    """Events produced, ingested and built into feature tables on the cluster, once for the module."""
    _cli(cluster_env, "produce", "synthetic", "--events", str(EVENTS), "--users", "80", "--items", "150")
    _cli(cluster_env, "ingest", "--until-idle")
    _cli(cluster_env, "features", "build")
    return cluster_env


def test_ingest_and_features_run_on_the_standalone_spark_worker(built: dict[str, str]) -> None:
    settings = _settings(built)
    assert DeltaTable(settings.table_uri(BRONZE_TABLE)).to_pyarrow_dataset().count_rows() == EVENTS

    master = requests.get(f"http://127.0.0.1:{settings.spark.master_webui_port}/json/", timeout=10).json()
    apps = {app["id"]: app["name"] for app in master["completedapps"]}
    assert len(apps) >= 2, master  # the ingest stream and the feature build, each its own application
    worker = requests.get(f"http://127.0.0.1:{settings.spark.worker_webui_port}/json/", timeout=10).json()
    ran_here = {executor["appid"] for executor in worker["finishedexecutors"]}
    assert set(apps) <= ran_here, (apps, ran_here)  # every application's executors ran on the worker


def test_training_places_workers_on_both_ray_nodes(built: dict[str, str]) -> None:
    settings = _settings(built)
    _cli(built, "train", "--model", "sasrec", "--workers", "2", "--epochs", "1",
         "--dim", "16", "--max-len", "20", "--batch-size", "64", "--json")  # fmt: skip
    url = f"{settings.ray.dashboard_url}/api/v0/actors"
    query = {"detail": "1", "filter_keys": "class_name", "filter_predicates": "=", "filter_values": "RayTrainWorker"}
    response = requests.get(url, params=query, headers=ray_access.auth_headers(settings), timeout=10)
    response.raise_for_status()
    actors = response.json()["data"]["result"]["result"]
    assert len(actors) == 2, actors
    nodes = {node["node_id"] for node in ray_access.cluster_nodes(settings) if node["state"] == "ALIVE"}
    assert {actor["node_id"] for actor in actors} == nodes

"""`streamrec up/status/down` with real processes, on a private home and private ports."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from infra.polling import wait_until
from infra.processes import free_port, group_members, port_in_use, read_record
from infra.settings import Settings

STREAMREC = str(Path(sys.executable).parent / "streamrec")


def _env(home: Path) -> dict[str, str]:
    inherited = {key: value for key, value in os.environ.items() if key != "STREAMREC_RAY_AUTH_TOKEN_FILE"}
    (home.parent / "user-home").mkdir(parents=True, exist_ok=True)
    return {
        **inherited,
        "HOME": str(home.parent / "user-home"),  # its own: nothing may write ~/.ray (test_up_status_use_down)
        "STREAMREC_HOME": str(home),
        "STREAMREC_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "STREAMREC_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "STREAMREC_RAY_ADDRESS": f"127.0.0.1:{free_port()}",
        "STREAMREC_RAY_DASHBOARD_PORT": str(free_port()),
        "STREAMREC_RAY_CLIENT_PORT": str(free_port()),
        # Its own: `status` probes serving there, so the session's app (if serving tests ran first) is not listed.
        "STREAMREC_SERVE_PORT": str(free_port()),
        "STREAMREC_TOPIC": "lifecycle-test",
        "COLUMNS": "200",
    }


def _cli(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STREAMREC, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _settings(env: dict[str, str]) -> Settings:
    values = {key[len("STREAMREC_") :].lower(): value for key, value in env.items() if key.startswith("STREAMREC_")}
    return Settings(**values)


def _ports(settings: Settings) -> list[int]:
    return [
        settings.kafka.hosts[0][1],
        int(settings.mlflow.tracking_uri.rsplit(":", 1)[1]),
        settings.ray.gcs[1],
        settings.ray.dashboard_port,
        settings.ray.client_port,
    ]


def _pids(settings: Settings) -> dict[str, int]:
    records = {name: read_record(settings.run_dir / f"{name}.pid") for name in ("kafka", "mlflow", "ray")}
    return {name: record.pid for name, record in records.items() if record is not None}


def _group_command_lines(pgid: int) -> list[str]:
    return [" ".join(process.cmdline()) for process in group_members(pgid)]


def _round_trip_kafka(settings: Settings) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    sent = [f"message-{i}-{uuid.uuid4()}".encode() for i in range(20)]
    for value in sent:
        producer.send(settings.kafka.topic, key=b"user-1", value=value)
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False)
    partitions = [TopicPartition(settings.kafka.topic, p) for p in consumer.partitions_for_topic(settings.kafka.topic)]
    assert len(partitions) == settings.kafka.topic_partitions
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    received: list[bytes] = []

    def all_received() -> bool:
        for records in consumer.poll(timeout_ms=1000).values():
            received.extend(record.value for record in records)
        return len(received) >= len(sent)

    with contextlib.suppress(TimeoutError):  # the assert below shows what arrived
        wait_until(all_received, 30, interval_s=0, what="the sent records to come back")
    consumer.close()
    assert received == sent  # one key -> one partition -> produce order


def _round_trip_mlflow(settings: Settings) -> None:
    import requests
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow.tracking_uri)
    experiment_id = client.create_experiment(f"lifecycle-{uuid.uuid4().hex}")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "hr_10", 0.25)
    client.set_terminated(run.info.run_id)
    response = requests.get(
        f"{settings.mlflow.tracking_uri}/api/2.0/mlflow/runs/get", params={"run_id": run.info.run_id}, timeout=10
    )
    response.raise_for_status()
    metrics = {m["key"]: m["value"] for m in response.json()["run"]["data"]["metrics"]}
    assert metrics == {"hr_10": 0.25}


RAY_TASK = """
import ray
from infra import ray_access
from infra.settings import get_settings
ray_access.connect(get_settings(), log_to_driver=False)
@ray.remote
def square(x):
    return x * x
print(sum(ray.get([square.remote(i) for i in range(10)])))
"""


def _round_trip_ray(env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-c", RAY_TASK], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "285"


@pytest.mark.integration  # starts the mini-cluster through the CLI: no service fixture
def test_up_status_use_down(tmp_path: Path) -> None:
    env = _env(tmp_path / "home")
    settings = _settings(env)
    try:
        started = _cli(env, "up")
        assert started.returncode == 0, started.stdout + started.stderr
        first_pids = _pids(settings)
        assert set(first_pids) == {"kafka", "mlflow", "ray"}

        status = _cli(env, "status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        states = json.loads(status.stdout)
        assert [s["name"] for s in states] == ["kafka", "mlflow", "ray"]
        assert all(s["healthy"] and s["mode"] == "local" for s in states), states

        again = _cli(env, "up")  # running `up` twice is safe and starts nothing new
        assert again.returncode == 0, again.stdout + again.stderr
        assert "already running" in again.stdout
        assert _pids(settings) == first_pids
        # MLflow's job-queue workers are switched off: streamrec never uses them.
        assert not any("huey" in line for line in _group_command_lines(first_pids["mlflow"]))

        _round_trip_kafka(settings)
        _round_trip_mlflow(settings)
        _round_trip_ray(env)
        assert (settings.log_dir / "mlflow.log").stat().st_size > 0
    finally:
        stopped = _cli(env, "down")
    assert stopped.returncode == 0, stopped.stderr
    for pid in first_pids.values():
        assert group_members(pid) == []
    for port in _ports(settings):
        assert not port_in_use("127.0.0.1", port), f"port {port} still listening after down"
    assert _pids(settings) == {}
    after = _cli(env, "status")
    assert after.returncode == 1
    # Ray ran with token authentication (the default) where the user has no ~/.ray/auth_token: the
    # head, the probe and the client used streamrec's token and created none there.
    assert settings.ray.auth == "token" and (settings.home / "ray" / "auth_token").is_file()
    assert not (Path(env["HOME"]) / ".ray").exists()


def test_taken_port_names_port_and_component(tmp_path: Path) -> None:
    env = _env(tmp_path / "home")
    port = int(env["STREAMREC_KAFKA_BOOTSTRAP"].rsplit(":", 1)[1])
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        result = _cli(env, "up", "kafka")
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert f"port {port}" in message and "kafka" in message and "Traceback" not in message
    assert _pids(_settings(env)) == {}


def test_external_component_is_checked_not_started(tmp_path: Path) -> None:
    env = _env(tmp_path / "home")
    env["STREAMREC_EXTERNAL"] = "mlflow"
    result = _cli(env, "up", "mlflow")
    assert result.returncode == 1
    assert "external mlflow" in " ".join(result.stderr.split())
    assert _pids(_settings(env)) == {}


def test_unknown_component_is_refused(tmp_path: Path) -> None:
    result = _cli(_env(tmp_path / "home"), "up", "zookeeper")
    assert result.returncode == 1
    assert "zookeeper" in result.stderr and "Traceback" not in result.stderr

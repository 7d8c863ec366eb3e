"""The HTTP ingress: HAProxy by default, Ray's Python proxy as the fallback (infra/serve_ingress.py).

The unit tests check the environment a Ray node gets and the clean-up of a stale HAProxy.
The served tests run against the session's app, which answers through HAProxy (the default):
which process answers, batching, overload; and a private Ray head of its own serves through
the Python proxy, then restarts with HAProxy and serves again.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from servingdata import Served, action, post, send, wait_for

from infra.components import RayHead, RayWorkerNode, settings_environment
from infra.processes import free_port
from infra.serve_ingress import ENABLE_VARIABLE, haproxy_dir, ingress_environment, stop_stale_haproxy
from infra.settings import Settings
from serving.deploy import cluster_ingress, deploy, start_serve

NODE_ID_CHARS = 56  # Ray's node ids: 28 bytes in hex
SOCKET_PATH_LIMIT = 107  # sun_path less its NUL; HAProxy binds through "<path>.<pid>.tmp" first


# Unit: a node's environment, a stale HAProxy ------------------------------------------------


def test_each_cluster_gets_its_own_haproxy_files_and_ports(tmp_path: Path) -> None:
    from ray.serve._private import constants

    settings = Settings(home=tmp_path / "a")
    head = ingress_environment(settings, head=True)
    worker = ingress_environment(settings, head=False)
    assert head[ENABLE_VARIABLE] == worker[ENABLE_VARIABLE] == "1"
    # Every default of Ray's HAProxy ingress that is the same for every cluster on the machine.
    shared_paths = [name for name, value in vars(constants).items() if str(value).startswith("/tmp/haproxy-serve")]
    assert len(shared_paths) >= 5, shared_paths
    directory = haproxy_dir(settings)
    for name in shared_paths:
        assert Path(str(head[name])).is_relative_to(directory) and head[name] == worker[name], name
    fixed_ports = {"RAY_SERVE_HAPROXY_STATS_PORT": 8404, "RAY_SERVE_HAPROXY_METRICS_PORT": 9101,
                   "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": 8500}  # fmt: skip
    assert all(getattr(constants, name) == port for name, port in fixed_ports.items())
    chosen = [int(str(head[name])) for name in fixed_ports]
    assert len(set(chosen)) == 3 and not set(chosen) & set(fixed_ports.values())
    assert "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT" not in worker  # only the head runs the fallback proxy
    assert int(str(head["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"])) < 30

    assert haproxy_dir(Settings(home=tmp_path / "b")) != directory
    socket = Path(str(head["RAY_SERVE_HAPROXY_SOCKET_PATH"]))
    longest = socket.parent / ("f" * NODE_ID_CHARS) / f"{socket.name}.4194304.tmp"
    assert len(str(longest)) <= SOCKET_PATH_LIMIT


def test_the_python_ingress_unsets_the_switch_and_nodes_carry_it(tmp_path: Path) -> None:
    python = Settings(home=tmp_path, serve_ingress="python")
    assert ingress_environment(python, head=True) == {ENABLE_VARIABLE: None}
    assert RayHead(python).environment()[ENABLE_VARIABLE] is None
    haproxy = Settings(home=tmp_path)
    assert haproxy.serve.ingress == "haproxy"
    for node in (RayHead(haproxy), RayWorkerNode(haproxy)):
        environment = node.environment()
        assert environment[ENABLE_VARIABLE] == "1" and environment["RAY_AUTH_MODE"] == "token"


def _haproxy(binary: str, config: Path) -> subprocess.Popen[bytes]:
    config.parent.mkdir(parents=True)
    config.write_text(
        "global\n    maxconn 16\ndefaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n"
        f"    timeout server 5s\nfrontend probe\n    bind 127.0.0.1:{free_port()}\n    http-request return status 200\n"
    )
    process = subprocess.Popen([binary, "-db", "-f", str(config)])
    wait_for(lambda: process.poll() is None and psutil.Process(process.pid).name() == "haproxy", timeout_s=10)
    return process


def test_a_stale_haproxy_of_this_home_is_stopped_and_others_are_left(tmp_path: Path) -> None:
    from ray.serve._private.haproxy import get_haproxy_binary

    ours, theirs = Settings(home=tmp_path / "ours"), Settings(home=tmp_path / "theirs")
    binary = get_haproxy_binary()
    processes = []
    try:
        for settings in (ours, theirs):
            processes.append(_haproxy(binary, haproxy_dir(settings) / "node" / "haproxy.cfg"))
        assert stop_stale_haproxy(ours) == [processes[0].pid]
        assert processes[0].wait(timeout=15) is not None and processes[1].poll() is None
        assert stop_stale_haproxy(ours) == []
    finally:
        for process in processes:
            process.kill()
            process.wait()
        for settings in (ours, theirs):
            shutil.rmtree(haproxy_dir(settings), ignore_errors=True)


def test_down_stops_an_haproxy_that_outlived_the_head_and_removes_its_files(tmp_path: Path) -> None:
    """`streamrec down ray` leaves nothing of the ingress: an HAProxy whose actor died with the
    head would hold the serving port, and its directory would stay in the temp dir."""
    from ray.serve._private.haproxy import get_haproxy_binary

    from infra import cluster
    from infra.processes import spawn

    settings = Settings(home=tmp_path)
    head = RayHead(settings)
    record = spawn(["sleep", "60"], head.log_file, head.pid_file)  # stands in for the head's process group
    haproxy = _haproxy(get_haproxy_binary(), haproxy_dir(settings) / "node" / "haproxy.cfg")
    try:
        assert cluster.down(settings, ["ray"]) == [f"ray (pid {record.pid})"]
        assert haproxy.wait(timeout=15) is not None
        assert not haproxy_dir(settings).exists()
    finally:
        haproxy.kill()
        haproxy.wait()
        shutil.rmtree(haproxy_dir(settings), ignore_errors=True)


def test_serve_start_survives_an_ingress_actor_that_died_while_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray import serve
    from ray.exceptions import ActorDiedError

    calls: list[dict[str, object]] = []

    def start(http_options: dict[str, object]) -> None:
        calls.append(http_options)
        if len(calls) == 1:
            raise ActorDiedError()  # what serve.start raised when the controller replaced the HAProxy manager

    monkeypatch.setattr(serve, "start", start)
    settings = Settings(serve_port=8123)
    start_serve(settings)
    assert calls == [{"host": "127.0.0.1", "port": 8123}] * 2

    def always(http_options: dict[str, object]) -> None:
        raise ActorDiedError()

    monkeypatch.setattr(serve, "start", always)
    with pytest.raises(ActorDiedError):
        start_serve(settings)


# The session's app, through HAProxy ----------------------------------------------------------


def _listener(port: int) -> str:
    """The name of the process that listens on ``port``."""
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            return psutil.Process(connection.pid).name()
    return ""


def test_serving_answers_through_haproxy_by_default(served: Served) -> None:
    assert served.settings.serve.ingress == "haproxy"
    assert cluster_ingress(served.settings) == "haproxy"
    assert _listener(served.settings.serve.port) == "haproxy"


def _batch_sizes(function: str) -> list[tuple[float, float]]:
    """(batches of one, all batches) of each replica's @serve.batch ``function``, from the
    Prometheus endpoint of each Ray node (Ray Serve's own histogram of batch sizes)."""
    import ray

    singles: dict[str, float] = {}
    counts: dict[str, float] = {}
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        text = requests.get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics", timeout=10).text
        for line in text.splitlines():
            if not line.startswith("ray_serve_actual_batch_size_"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if labels.get("function_name") != function:
                continue
            value = float(line.rsplit(" ", 1)[1])
            if line.startswith("ray_serve_actual_batch_size_count"):
                counts[labels["WorkerId"]] = value
            elif labels.get("le") == "1.0":
                singles[labels["WorkerId"]] = value
    return [(singles.get(worker, 0.0), count) for worker, count in counts.items()]


def test_concurrent_requests_are_batched(served: Served) -> None:
    def burst() -> list[tuple[float, float]] | None:
        barrier = threading.Barrier(32)

        def one() -> None:
            barrier.wait()
            post(served, "/retrieve", {"user_id": served.users[0], "k": 5})

        threads = [threading.Thread(target=one) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(1)
        series = _batch_sizes("_search")
        return series if any(count > single for single, count in series) else None

    # Ray exports its metrics every few seconds: bursts until a batch of more than one shows.
    wait_for(burst, timeout_s=120, every_s=2)


# A private head: the Python fallback, and a restart with HAProxy ------------------------------


def test_the_python_ingress_serves_and_a_restarted_head_serves_through_haproxy(
    served: Served, test_env: dict[str, str], tmp_path: Path
) -> None:
    """Also the fault of issue 30, item 3: the Ray head stopped (`streamrec down ray`) and started
    again, serving comes back by `streamrec up` alone, with the production model, a user's
    history exactly as before (the same answer) and an event sent while it was down."""
    ports = {"ray_address": f"127.0.0.1:{free_port()}", "ray_dashboard_port": free_port(),
             "ray_client_port": free_port(), "serve_port": free_port()}  # fmt: skip
    private = served.settings.updated(home=tmp_path / "home", ray_auth_token_file="", serve_ingress="python", **ports)
    env = {**os.environ, **settings_environment(served.settings), "STREAMREC_LAKE_URI": served.settings.lake_root,
           "HOME": test_env["HOME"], "STREAMREC_HOME": str(private.home), "STREAMREC_RAY_AUTH_TOKEN_FILE": "",
           **{f"STREAMREC_{name.upper()}": str(value) for name, value in ports.items()},
           "STREAMREC_RAY_NUM_CPUS": "1", "STREAMREC_SERVE_HISTORY_SHARDS": "0", "STREAMREC_SERVE_INGRESS": "python",
           "STREAMREC_EXTERNAL": "kafka,mlflow", "COLUMNS": "250"}  # fmt: skip
    url = f"http://{private.serve.host}:{private.serve.port}"

    def streamrec(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "infra.cli", *args], env=env, capture_output=True, text=True,
                                timeout=600)  # fmt: skip
        assert result.returncode == 0, f"streamrec {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    def answers() -> None:
        body = requests.post(f"{url}/recommend", json={"user_id": served.users[3]}, timeout=30).json()
        assert body["lineage"]["model_version"][private.mlflow.registered_model] == served.run.model_version
        assert requests.post(f"{url}/recommend", json={"k": 3}, timeout=30).status_code == 422
        huge = b'{"history": [' + b'"x",' * 40_000 + b'"x"]}'
        response = requests.post(f"{url}/retrieve", data=huge, headers={"content-type": "application/json"}, timeout=30)
        assert response.status_code == 413
        assert requests.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"
        assert "streamrec_requests_total" in requests.get(f"{url}/metrics", timeout=30).text

    def recommend(user: str) -> dict[str, Any]:
        response = requests.post(f"{url}/recommend", json={"user_id": user, "k": 50}, timeout=30)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def history_of(body: dict[str, Any]) -> tuple[object, ...]:
        history = body["lineage"]["history"]
        return history["source"], history["events"], history["partition"], history["bootstrap_versions"]

    kept, clicks = served.users[3], served.users[7]  # no other test sends events of these two
    try:
        streamrec("up", "ray", "serve")
        assert cluster_ingress(private) == "python"
        assert _listener(private.serve.port).startswith("ray::")  # Ray's Python proxy actor
        answers()
        before, clicked = recommend(kept), recommend(clicks)["items"][0]["item_id"]
        streamrec("down", "ray")  # the head stops; serving goes with it
        [landed] = send(served.settings, [action(clicks, clicked, "click")])
        env["STREAMREC_SERVE_INGRESS"] = "haproxy"
        streamrec("up")  # Kafka and MLflow checked, the head started, the production version served
        assert cluster_ingress(private) == "haproxy" and _listener(private.serve.port) == "haproxy"
        answers()
        after = recommend(kept)
        assert history_of(after) == history_of(before) and history_of(after)[0] == "online"
        assert [item["item_id"] for item in after["items"]] == [item["item_id"] for item in before["items"]]
        scores = [item["score"] for item in after["items"]]
        assert scores == pytest.approx([item["score"] for item in before["items"]], rel=1e-5)
        # The click sent while the head was down: in the history (a seen item leaves /recommend).
        answer = wait_for(lambda: (body := recommend(clicks))["lineage"]["history"]["offset"] >= landed.offset and body)
        assert answer["lineage"]["history"]["partition"] == landed.partition
        assert clicked not in [item["item_id"] for item in answer["items"]]
    finally:
        subprocess.run([sys.executable, "-m", "infra.cli", "down", "serve", "ray"], env=env, capture_output=True,
                       timeout=300)  # fmt: skip


def test_overload_is_answered_503_at_once_never_a_hang(served: Served) -> None:
    tight = served.settings.updated(serve_max_ongoing_requests=1, serve_max_queued_requests=1, serve_history_shards=0)
    outcomes: Counter[str] = Counter()
    slowest_503 = 0.0
    barrier = threading.Barrier(48)
    lock = threading.Lock()

    def one() -> None:
        nonlocal slowest_503
        barrier.wait()
        started = time.monotonic()
        try:
            response = post(served, "/recommend", {"user_id": served.users[4]})
        except requests.RequestException as error:
            outcome = error.__class__.__name__
        else:
            outcome = str(response.status_code)
        with lock:
            outcomes[outcome] += 1
            if outcome == "503":
                slowest_503 = max(slowest_503, time.monotonic() - started)

    deploy(tight)
    try:
        wait_for(lambda: _shards(served) == 1, timeout_s=60)  # HAProxy routes to the tight replica only
        threads = [threading.Thread(target=one) for _ in range(48)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert set(outcomes) == {"200", "503"}, outcomes
        assert slowest_503 < 10, slowest_503  # turned away, not queued
        assert post(served, "/recommend", {"user_id": served.users[4]}).status_code == 200
    finally:
        deploy(served.settings)
        wait_for(lambda: all(_shards(served) == served.settings.serve.history_shards for _ in range(5)), timeout_s=60)


def _shards(served: Served) -> int:
    return len(requests.get(f"{served.url}/healthz", timeout=10).json()["history_shards"])

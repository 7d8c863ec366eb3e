"""The serving application over HTTP: contracts, cold start, live history, swaps, bad input."""

from __future__ import annotations

import random
import threading
from collections import Counter
from pathlib import Path

import pytest
import requests
from servingdata import Served, action, post, register_copy, send, wait_for

from features.tables import ITEM_STATS_TABLE
from serving.catalog import read_popularity
from serving.registry import promote, rollback, served_version
from training.common import tracking

JSON = {"content-type": "application/json"}


def _ok(response: requests.Response) -> dict:
    assert response.status_code == 200, response.text
    return dict(response.json())


def _items(response: requests.Response) -> list[str]:
    return [item["item_id"] for item in _ok(response)["items"]]


def test_retrieve_and_recommend_answer_with_lineage(served: Served) -> None:
    user = served.users[0]
    body = _ok(post(served, "/retrieve", {"user_id": user, "k": 20}))
    assert len(body["items"]) == 20 and not body["cold_start"]
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    lineage = body["lineage"]
    name = served.settings.mlflow.registered_model
    assert lineage["model_version"] == {name: served.run.model_version}
    assert lineage["model_run_id"] == {name: served.run.run_id}
    history = lineage["history"]
    assert history["source"] == "online" and history["events"] > 0
    assert history["partition"] in range(4) and history["offset"] >= 0
    assert history["bootstrap_versions"] == lineage["feature_versions"]

    recommended = post(served, "/recommend", {"user_id": user}).json()
    assert len(recommended["items"]) == 10
    given = post(served, "/retrieve", {"history": [body["items"][0]["item_id"], "no-such-item"], "k": 5}).json()
    assert given["lineage"]["history"]["source"] == "request" and given["unknown_items"] == 1
    assert len(given["items"]) == 5 and not given["cold_start"]

    health = requests.get(f"{served.url}/healthz", timeout=10).json()
    assert health["status"] == "ok" and health["model"]["version"] == served.run.model_version
    assert health["model"]["index"] == "exact" and all(shard["running"] for shard in health["history_shards"])
    owned = [sorted(int(p) for p in shard["partitions"]) for shard in health["history_shards"]]
    assert sorted(owned) == [[0, 2], [1, 3]]
    metrics = requests.get(f"{served.url}/metrics", timeout=10).text
    assert 'streamrec_requests_total{endpoint="retrieve",status="200"}' in metrics
    assert requests.get(f"{served.url}/docs", timeout=10).status_code == 200


def test_unknown_users_get_the_popularity_list(served: Served) -> None:
    body = post(served, "/recommend", {"user_id": "never-seen-user", "k": 5}).json()
    assert body["cold_start"] and body["lineage"]["history"]["source"] == "none"
    indices, _ = read_popularity(served.settings, 10_000)
    from deltalake import DeltaTable

    stats = DeltaTable(served.settings.table_uri(ITEM_STATS_TABLE)).to_pyarrow_table(columns=["item_id", "item_index"])
    id_of = dict(zip(stats["item_index"].to_pylist(), stats["item_id"].to_pylist(), strict=True))
    assert [item["item_id"] for item in body["items"]] == [id_of[index] for index in indices[:5]]
    only_unknown = post(served, "/retrieve", {"history": ["nope-1", "nope-2"], "k": 3}).json()
    assert only_unknown["cold_start"] and only_unknown["unknown_items"] == 2


def test_a_new_action_changes_the_recommendations(served: Served) -> None:
    user = served.users[1]
    before = _items(post(served, "/recommend", {"user_id": user, "k": 10}))
    clicked = before[0]
    [landed] = send(served.settings, [action(user, clicked, "click")])
    # The clicked item is now seen: it leaves /recommend, and the history names the record's offset.
    after = wait_for(lambda: _answer_without(served, "/recommend", user, clicked))
    assert after["lineage"]["history"]["partition"] == landed.partition
    assert after["lineage"]["history"]["offset"] >= landed.offset

    # A dislike removes an item even where seen items are kept (/retrieve's default).
    kept = _items(post(served, "/retrieve", {"user_id": user, "k": 10}))
    disliked = kept[0]
    send(served.settings, [action(user, disliked, "dislike")])
    wait_for(lambda: disliked not in _items(post(served, "/retrieve", {"user_id": user, "k": 10})))

    # A user the snapshot never saw exists from their first action on.
    newcomer = f"new-user-{random.randrange(10**9)}"
    send(served.settings, [action(newcomer, clicked, "click")])
    fresh = wait_for(lambda: _warm_answer(served, newcomer))
    assert clicked not in [item["item_id"] for item in fresh["items"]]


def _answer_without(served: Served, path: str, user: str, item: str) -> dict | None:
    body = post(served, path, {"user_id": user, "k": 10}).json()
    return body if item not in [entry["item_id"] for entry in body["items"]] else None


def _warm_answer(served: Served, user: str) -> dict | None:
    body = post(served, "/recommend", {"user_id": user}).json()
    return None if body["cold_start"] else body


def _health_with_error(served: Served) -> dict | None:
    body = requests.get(f"{served.url}/healthz", timeout=10).json()
    return body if body["last_error"] else None


def _register_broken(served: Served, tmp_path: Path) -> str:
    client = tracking.client(served.settings)
    run = client.create_run(tracking.experiment_id(served.settings), run_name="broken-model")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text("{not json")
    client.log_artifacts(run.info.run_id, str(tmp_path / "model"), "model")
    client.set_terminated(run.info.run_id, "FINISHED")
    source = f"{run.info.artifact_uri}/model"
    return str(
        client.create_model_version(served.settings.mlflow.registered_model, source, run_id=run.info.run_id).version
    )


def test_promotion_swaps_without_a_failed_request_and_a_broken_version_keeps_the_old(
    served: Served, tmp_path: Path
) -> None:
    settings = served.settings
    first = served_version(settings)
    second = register_copy(served)
    outcomes: Counter[str] = Counter()
    versions_seen: list[str] = []
    stop = threading.Event()

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                response = session.post(f"{served.url}/recommend", json={"user_id": served.users[2]}, timeout=30)
            except requests.RequestException as error:
                outcomes[error.__class__.__name__] += 1
                continue
            outcomes[str(response.status_code)] += 1
            if response.status_code == 200:
                versions_seen.append(response.json()["lineage"]["model_version"][settings.mlflow.registered_model])

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_for(lambda: len(versions_seen) > 5)
        promote(settings, second)
        wait_for(lambda: versions_seen and versions_seen[-1] == second)
        wait_for(lambda: versions_seen.count(second) > 5)
    finally:
        stop.set()
        thread.join()
    assert set(outcomes) == {"200"}, outcomes
    assert versions_seen[0] == first and versions_seen[-1] == second
    assert versions_seen.index(second) > 0 and set(versions_seen[versions_seen.index(second) :]) == {second}

    broken = _register_broken(served, tmp_path)
    promote(settings, broken)
    health = wait_for(lambda: _health_with_error(served))
    assert f"version {broken} failed to load" in health["last_error"] and health["model"]["version"] == second
    assert health["status"] == "degraded"
    body = post(served, "/recommend", {"user_id": served.users[2]}).json()
    assert body["lineage"]["model_version"][settings.mlflow.registered_model] == second

    assert rollback(settings) == second
    assert served_version(settings) == second
    wait_for(lambda: requests.get(f"{served.url}/healthz", timeout=10).json()["last_error"] is None)


BAD_BODIES = [
    {},
    {"user_id": "u", "history": ["a"]},
    {"user_id": ""},
    {"user_id": 5},
    {"user_id": None},
    {"user_id": "u", "k": 0},
    {"user_id": "u", "k": -3},
    {"user_id": "u", "k": "ten"},
    {"user_id": "u", "k": 10**9},
    {"user_id": "u", "exclude_seen": "maybe"},
    {"user_id": "u", "unexpected": 1},
    {"history": "not-a-list"},
    {"history": [1, 2, 3]},
    {"history": ["x"] * 5_000},
    {"user_id": "u" * 10_000},
    [1, 2, 3],
    "just a string",
    None,
]


@pytest.mark.parametrize("path", ["/retrieve", "/recommend"])
def test_bad_bodies_get_4xx_never_5xx(served: Served, path: str) -> None:
    for body in BAD_BODIES:
        response = post(served, path, body)
        assert 400 <= response.status_code < 500, (body, response.status_code, response.text)
        assert response.json()["detail"]
    rng = random.Random(0)
    for _ in range(30):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        response = requests.post(f"{served.url}{path}", data=raw, headers=JSON, timeout=10)
        assert 400 <= response.status_code < 500, (raw, response.status_code)
    huge = b'{"history": [' + b'"x",' * 40_000 + b'"x"]}'
    response = requests.post(f"{served.url}{path}", data=huge, headers=JSON, timeout=10)
    assert response.status_code == 413


def test_the_application_builder_serves_the_production_model(served: Served) -> None:
    # What Ray Serve config files and KubeRay's RayService import (serving.app:app_from_settings).
    from ray.serve import Application

    from serving.app import app_from_settings
    from serving.config import production_config

    settings = served.settings
    app = app_from_settings({"home": str(settings.home), "topic": settings.kafka.topic,
                             "registered_model": settings.mlflow.registered_model})  # fmt: skip
    assert isinstance(app, Application)
    config = production_config(settings)
    assert (
        config.bootstrap_versions
        == post(served, "/recommend", {"user_id": served.users[0]}).json()["lineage"]["history"]["bootstrap_versions"]
    )


def test_streamrec_up_down_and_status_handle_serving(served: Served, test_env: dict[str, str]) -> None:
    """`streamrec status|up|down serve`, in-process (infra.cli's Typer app through CliRunner): no new
    interpreter and Ray driver per command. That a `streamrec up serve` process leaves the app
    serving after it exits is tests/serving/test_ingress.py's private head test."""
    # Last in this module: it takes serving down and brings it back with `streamrec up serve`.
    from typer.testing import CliRunner

    from infra import cli
    from infra.components import settings_environment

    # The served settings, in the home of the session's processes (whose pid records `up` reads).
    env = {**settings_environment(served.settings), "STREAMREC_LAKE_URI": served.settings.lake_root,
           "STREAMREC_HOME": test_env["STREAMREC_HOME"], "HOME": test_env["HOME"], "COLUMNS": "250"}  # fmt: skip

    def streamrec(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli.app, list(args), env=env)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        return result.exit_code, result.stdout

    code, status = streamrec("status", "serve")
    assert code == 0 and "serve" in status and "healthy" in status, status
    assert f"v{served_version(served.settings)}" in status
    code, again = streamrec("up", "serve")
    assert code == 0 and "already running" in again, again

    code, down = streamrec("down", "serve")
    assert code == 0 and "stopped: serve" in down, down
    code, gone = streamrec("status", "serve")
    assert code == 1 and "not running" in gone, gone
    assert streamrec("status", "kafka")[0] == 0  # the processes were left alone

    # Back up, this time with the history inside the recommender replica (no shard deployments).
    env["STREAMREC_SERVE_HISTORY_SHARDS"] = "0"
    code, started = streamrec("up", "serve")
    assert code == 0 and "healthy" in started, started
    health = requests.get(f"{served.url}/healthz", timeout=10).json()
    [local] = health["history_shards"]
    assert local["shard"] == "in-replica" and sorted(int(p) for p in local["partitions"]) == [0, 1, 2, 3]
    user = served.users[5]
    body = post(served, "/recommend", {"user_id": user}).json()
    assert body["lineage"]["model_version"][served.settings.mlflow.registered_model] == served_version(served.settings)
    assert body["lineage"]["history"]["source"] == "online"
    clicked = body["items"][0]["item_id"]
    send(served.settings, [action(user, clicked, "click")])
    wait_for(lambda: _answer_without(served, "/recommend", user, clicked))

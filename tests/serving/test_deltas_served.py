"""The session's served app applies model deltas (serving/deltas.py): a delta published to
models/deltas changes /retrieve, /recommend and their lineage within seconds, under a small
concurrent client that sees no failed request; a bad delta leaves it serving and degraded; a
replica killed and restarted converges to the newest delta; dropping the deltas brings the base back."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from typing import Any

import numpy as np
import requests
from servingdata import Served, post, wait_for

from infra import ray_access
from infra.settings import Settings
from serving.catalog import load_catalog
from serving.config import APP_NAME
from training.streaming.deltas import MODEL_DELTAS_TABLE, ModelDelta, ModelDeltaTable

VISIBLE_WITHIN_S = 10.0  # the target is 5 s p95 (docs/serving.md); a shared 2-core machine gets slack


def _health(served: Served) -> dict[str, Any]:
    return requests.get(f"{served.url}/healthz", timeout=10).json()


def _replica_pids(settings: Settings) -> set[int]:
    """The process ids of the app's live Recommender replicas (Ray's state API)."""
    params = {"filter_keys": ["state", "class_name"], "filter_predicates": ["=", "="],
              "filter_values": ["ALIVE", f"ServeReplica:{APP_NAME}:Recommender"], "detail": "false"}  # fmt: skip
    url = f"{settings.ray.dashboard_url}/api/v0/actors"
    response = requests.get(url, params=params, headers=ray_access.auth_headers(settings), timeout=10)
    return {int(actor["pid"]) for actor in response.json()["data"]["result"]["result"]}


def test_a_published_delta_is_served_within_seconds_without_a_failed_request(served: Served) -> None:
    settings = served.settings
    model = settings.mlflow.registered_model
    health = _health(served)
    version = health["model"]["version"]
    assert health["model"]["delta"] == {"base_version": int(version), "sequence": 0, "checksum": ""}
    catalog = load_catalog(settings, version, exact_max_items=settings.serve.exact_max_items,
                           hnsw_m=settings.serve.hnsw_m, ef_search=settings.serve.hnsw_ef_search)  # fmt: skip
    history = [str(item) for item in catalog.item_ids[1:4]]
    query = catalog.encode([[(catalog.index_of[item], "click", 0) for item in history]])[0]  # as the app encodes it
    asked = {"history": history, "k": 10, "exclude_seen": True}
    before = [item["item_id"] for item in post(served, "/retrieve", asked).json()["items"]]
    local = [str(catalog.item_ids[item]) for item, _ in catalog.search(query[None, :], 10, [set(range(1, 4))])[0]]
    assert len(set(before) & set(local)) >= 8, (before, local)  # the query computed here is the app's
    chosen = next(index for index in range(catalog.num_items, 3, -1) if str(catalog.item_ids[index]) not in before)
    chosen_id, new_id, new_index = str(catalog.item_ids[chosen]), f"new-{uuid.uuid4().hex[:8]}", catalog.num_items + 1
    noise = np.random.default_rng(0).standard_normal(query.shape).astype(np.float32)
    rows = {chosen: 2.0 * query, new_index: query + 0.01 * noise}  # cosine 1 and just under 1 with the query

    outcomes: Counter[str] = Counter()
    sequences: list[int] = []
    stop = threading.Event()

    def client(user: str) -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                response = session.post(f"{served.url}/recommend", json={"user_id": user}, timeout=30)
            except requests.RequestException as error:
                outcomes[error.__class__.__name__] += 1
                continue
            outcomes[str(response.status_code)] += 1
            if response.status_code == 200:
                sequences.append(response.json()["lineage"]["delta"]["sequence"])

    threads = [threading.Thread(target=client, args=(user,)) for user in served.users[:3]]
    for thread in threads:
        thread.start()
    table = ModelDeltaTable(settings.table_uri(MODEL_DELTAS_TABLE))
    try:
        wait_for(lambda: len(sequences) > 10)
        indices = np.array(sorted(rows), dtype=np.int64)
        delta = ModelDelta.build(
            table.last(model, int(version)), item_indices=indices,
            item_vectors=np.stack([rows[int(index)] for index in indices]), silver_version=0, kafka_offsets={},
            new_items={new_id: new_index},
        )  # fmt: skip
        table.publish(delta)
        published = time.monotonic()

        def applied() -> dict[str, Any] | None:
            answer = post(served, "/retrieve", asked).json()
            return answer if answer["lineage"]["delta"]["sequence"] == 1 else None

        answer = wait_for(applied, timeout_s=60, every_s=0.05)
        visible_s = time.monotonic() - published
        wait_for(lambda: sequences.count(1) > 10)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    try:
        assert set(outcomes) == {"200"}, outcomes
        assert sequences[0] == 0 and sequences[-1] == 1 and sequences == sorted(sequences)  # one replica: never back
        assert visible_s < VISIBLE_WITHIN_S, visible_s
        found = [item["item_id"] for item in answer["items"]]
        assert found[0] == chosen_id and new_id in found[:3], found
        assert answer["lineage"]["delta"] == {"base_version": int(version), "sequence": 1, "checksum": delta.checksum}
        with_new = post(served, "/retrieve", {"history": [new_id], "k": 5}).json()
        assert with_new["unknown_items"] == 0 and not with_new["cold_start"]  # the new item is in the vocabulary
        health = _health(served)
        assert health["status"] == "ok" and health["model"]["items"] == new_index
        assert health["deltas"]["applied"][-1]["sequence"] == 1

        # A bad delta (a row that names no item) is refused: the last good state serves on, degraded.
        bad = ModelDelta.build(
            delta.position, item_indices=np.array([new_index + 5]), item_vectors=query[None, :], silver_version=0,
            kafka_offsets={},
        )  # fmt: skip
        table.publish(bad)
        health = wait_for(lambda: (body := _health(served))["status"] == "degraded" and body)
        assert "name no new item" in health["delta_last_error"] and health["model"]["delta"]["sequence"] == 1
        assert post(served, "/recommend", {"user_id": served.users[0]}).json()["lineage"]["delta"]["sequence"] == 1

        # A replica killed and restarted loads the base and converges to the newest good delta.
        (victim,) = _replica_pids(settings)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: (pids := _replica_pids(settings)) and victim not in pids, timeout_s=180, every_s=0.5)

        def converged() -> dict[str, Any] | None:
            try:
                body = _health(served)
            except (requests.RequestException, ValueError):
                return None
            return body if (body.get("model") or {}).get("delta", {}).get("sequence") == 1 else None

        health = wait_for(converged, timeout_s=300, every_s=0.5)
        assert health["status"] == "degraded" and "name no new item" in health["delta_last_error"]
        found = [item["item_id"] for item in post(served, "/retrieve", {"history": history, "k": 3}).json()["items"]]
        assert found[0] == chosen_id
    finally:
        # Dropped deltas under a base the alias still names: the replica reloads the base.
        table.drop(model, int(version))
        wait_for(lambda: (body := _health(served))["model"]["delta"]["sequence"] == 0 and body["status"] == "ok", 120)
    after = post(served, "/retrieve", asked).json()
    assert [item["item_id"] for item in after["items"]] == before  # the base again, as before the delta

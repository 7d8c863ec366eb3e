"""Fault: the model registry (MLflow) unreachable while serving follows the production alias
(issue 30, item 3). The integration test stops the session's MLflow server under the served
app and starts it again (in a finally); the replicas are never restarted."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import requests
from servingdata import Served, post, register_copy, wait_for

from infra import cluster
from infra.processes import free_port
from infra.settings import Settings, get_settings
from serving.registry import RegistryUnreachable, promote, served_version
from training.common import tracking


def test_served_version_tells_an_unreachable_registry_from_an_unset_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused connection raises; it once read as "no production version", which let a round
    train from scratch and serving report nothing wrong."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    settings = get_settings(mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RegistryUnreachable, match="cannot read the 'production' alias of .*Connection refused"):
        served_version(settings)


def _health(served: Served) -> dict[str, Any]:
    return dict(requests.get(f"{served.url}/healthz", timeout=10).json())


def _served_by(served: Served) -> str:
    """The retrieval version behind a /recommend answer (which must be 200)."""
    response = post(served, "/recommend", {"user_id": served.users[3]})
    assert response.status_code == 200, response.text
    return str(response.json()["lineage"]["model_version"][served.settings.mlflow.registered_model])


def test_mlflow_unreachable_keeps_the_model_and_the_new_version_is_taken_when_it_is_back(
    served: Served, mini_cluster: Settings
) -> None:
    settings, first = served.settings, served.run.model_version
    second = register_copy(served)
    unset = f"never-promoted-{uuid.uuid4().hex[:8]}"
    tracking.client(settings).create_registered_model(unset)
    assert served_version(settings, unset) is None and served_version(settings, f"no-such-{unset}") is None
    swaps_before = _health(served)["swaps"]
    started = time.monotonic()
    try:
        cluster.down(mini_cluster, ["mlflow"])
        # The retrieval watcher's own error (the delta follower and the ranking watcher may say so first).
        health = wait_for(lambda: (body := _health(served))["last_error"] and body, timeout_s=30)
        assert f"cannot read the serving alias, still serving {first}" in health["last_error"], health
        assert health["status"] == "degraded"
        assert health["model"]["version"] == first and _served_by(served) == first
        outage_s = time.monotonic() - started

        cluster.up(mini_cluster, ["mlflow"])
        wait_for(lambda: _health(served)["status"] == "ok", timeout_s=30)  # every error cleared by itself
        # The alias moves, and MLflow goes away while the replica downloads the new version.
        promote(settings, second)
        cluster.down(mini_cluster, ["mlflow"])
        assert _served_by(served) in (first, second)  # either way, answers go on
        during = wait_for(lambda: (body := _health(served))["last_error"] and body, timeout_s=30)
    finally:
        cluster.up(mini_cluster, ["mlflow"])
    wait_for(lambda: _health(served)["model"]["version"] == second, timeout_s=60)
    health = wait_for(lambda: (body := _health(served))["status"] == "ok" and body, timeout_s=30)
    assert _served_by(served) == second and _health(served)["last_error"] is None
    # The same replica took it: its swap record goes on from before the outage.
    swaps = _health(served)["swaps"]
    assert swaps[: len(swaps_before)] == swaps_before and swaps[-1]["to_version"] == second
    print(
        f"degraded {outage_s:.1f} s after MLflow stopped; second outage met the load: "
        f"{'failed to load' in (during['last_error'] or '')}; {health['swaps'][-1]}"
    )

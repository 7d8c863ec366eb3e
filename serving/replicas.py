"""How many replicas of a Serve deployment run, as Ray Serve's controller sees them.

/healthz reports it, so a replica that died and the one Ray Serve starts in its place show
(``{"RUNNING": 1, "STARTING": 1}`` until the new one serves) wherever the health check lands.
Ray Serve notices a dead replica at its next health check of it (``health_check_period_s``,
10 s by default), so the count lags a death by up to that long.
"""

from __future__ import annotations

import asyncio
import time

import requests

from infra import ray_access
from infra.settings import Settings

READ_TIMEOUT_S = 2.0  # /healthz must answer even when the controller is slow or gone
FRESH_S = 1.0  # a read serves the /healthz calls of the next second: the controller is asked once
_last: dict[tuple[str, str], tuple[float, dict[str, int] | None]] = {}


def replica_states(app: str, deployment: str) -> dict[str, int]:
    """The deployment's replicas by state (RUNNING, STARTING, ...), states with none left out."""
    from ray import serve

    states = serve.status().applications[app].deployments[deployment].replica_states
    return {str(getattr(state, "value", state)): count for state, count in states.items() if count}


def replica_pids(settings: Settings, app: str, deployment: str) -> dict[str, int]:
    """Alive replica actors of the deployment: actor id -> process id (Ray's state API), e.g. to
    kill one in a fault test or benchmark."""
    params = {"filter_keys": ["state", "class_name"], "filter_predicates": ["=", "="],
              "filter_values": ["ALIVE", f"ServeReplica:{app}:{deployment}"], "detail": "false"}  # fmt: skip
    url = f"{settings.ray.dashboard_url}/api/v0/actors"
    response = requests.get(url, params=params, headers=ray_access.auth_headers(settings), timeout=10)
    return {actor["actor_id"]: int(actor["pid"]) for actor in response.json()["data"]["result"]["result"]}


async def read_replica_states(app: str, deployment: str) -> dict[str, int] | None:
    """``replica_states`` off the event loop, read at most once per ``FRESH_S``; None when the
    controller does not answer in time."""
    read_at, states = _last.get((app, deployment), (-FRESH_S, None))
    if time.monotonic() - read_at < FRESH_S:
        return states
    try:
        states = await asyncio.wait_for(asyncio.to_thread(replica_states, app, deployment), READ_TIMEOUT_S)
    except Exception:  # a health check must not fail for want of this detail
        states = None
    _last[(app, deployment)] = (time.monotonic(), states)
    return states

"""Helpers of the serving tests: the served pipeline's record, live actions, HTTP calls.

Kept out of conftest.py so the tests import them by a name of their own (``from conftest
import`` finds whichever conftest was imported last when several test folders run together).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from pipelinedata import send as send  # the serving tests send live actions with it

from infra.polling import wait_until
from infra.settings import Settings
from ingestion.producer import OutRecord, encode_event
from training.common import tracking
from training.ranking.runner import RankingOutcome
from training.retrieval.runner import TrainOutcome


@dataclass(frozen=True)
class Served:
    """The served pipeline: its settings, HTTP root, the run behind the production version and
    a registered ranking run (not promoted when the session starts)."""

    settings: Settings
    url: str
    run: TrainOutcome
    ranking_run: RankingOutcome
    users: list[str]


def action(user_id: str, item_id: str, kind: str) -> OutRecord:
    """A valid event of ``user_id`` doing ``kind`` on ``item_id`` now."""
    event = {"event_id": f"e-{uuid.uuid4().hex}", "user_id": user_id, "item_id": item_id, "action": kind,
             "ts": int(time.time() * 1000)}  # fmt: skip
    return encode_event(event)


def wait_for(predicate: Callable[[], Any], timeout_s: float = 30.0, every_s: float = 0.1) -> Any:
    """The first true value of ``predicate()`` within ``timeout_s``; TimeoutError after."""
    return wait_until(predicate, timeout_s, every_s, what="the condition")


def post(served: Served, path: str, body: object, **kwargs: object) -> requests.Response:
    return requests.post(f"{served.url}{path}", json=body, timeout=30, **kwargs)  # type: ignore[arg-type]


def register_copy(served: Served) -> str:
    """A new registered version with the production version's model files."""
    client = tracking.client(served.settings)
    source = client.get_model_version(served.settings.mlflow.registered_model, served.run.model_version).source
    return str(
        client.create_model_version(served.settings.mlflow.registered_model, source, run_id=served.run.run_id).version
    )

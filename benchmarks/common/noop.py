"""The no-op baseline of the serving benchmark: Ray Serve with the same ingress shape, no work.

A FastAPI ingress on a Ray Serve deployment, as ``serving.app.Recommender``: POST a pydantic
JSON body, get a small JSON list back. It runs in the same Serve instance as the real app
(same HTTP proxy, another app name and route prefix), so the ratio of the real endpoints'
latency to this one's is what the model, the history lookup and the search add on top of
HTTP, the proxy, routing and (de)serialisation on this machine.

No ``from __future__ import annotations`` here: FastAPI reads the endpoint annotations as
real types. Replicas import this module by name, so its deployment is given a PYTHONPATH
holding the repository root (``benchmarks`` is not an installed package).
"""

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

APP_NAME = "bench-noop"
ROUTE_PREFIX = "/noop"
ROOT = Path(__file__).resolve().parents[2]

noop_api = FastAPI(title="streamrec serving benchmark: no-op")


class NoopRequest(BaseModel):
    """The body of POST /recommend, validated as the real one is."""

    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(None, min_length=1, max_length=256)
    history: list[str] | None = None
    k: int = Field(10, ge=1)
    exclude_seen: bool = True


class NoopItem(BaseModel):
    item_id: str
    score: float


ANSWER = [NoopItem(item_id=f"i{rank}", score=1.0 - rank / 100) for rank in range(100)]


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(noop_api)
class Noop:
    """Answers every request with the first k items of a fixed list."""

    @noop_api.post("/recommend", response_model=list[NoopItem])
    async def recommend(self, body: NoopRequest) -> list[NoopItem]:
        return ANSWER[: body.k]


def noop_app(max_ongoing_requests: int, max_queued_requests: int) -> Any:
    """The no-op application, with the same request limits as the real recommender."""
    return Noop.options(  # type: ignore[attr-defined]
        num_replicas=1,
        max_ongoing_requests=max_ongoing_requests,
        max_queued_requests=max_queued_requests,
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": {"PYTHONPATH": str(ROOT)}}},
    ).bind()

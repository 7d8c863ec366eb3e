"""The Ray Serve application: history shards and the recommender ingress, composed with bind().

Two rules of this module: no ``from __future__ import annotations`` (FastAPI reads the endpoint
annotations as real types), and the deployments use only names imported or defined above them
(``@serve.ingress`` pickles the routes while this module is still being imported).

    HistoryShard x serve_history_shards   each tails its Kafka partitions (serving.history.store)
    Recommender  x serve_replicas         FastAPI ingress: /retrieve, /rank, /recommend, /healthz, /metrics

A request for a stored user asks the shards for the user's history (a user lives in one
partition, so one shard knows them; with ``serve_history_shards`` 0 the replica holds every
partition's history itself and asks no one), encodes it with the served model's Retriever (queries of
concurrent requests are batched with @serve.batch) and searches the FAISS index, leaving out
the user's recently skipped or disliked items (always) and seen items (``exclude_seen``).
An LRURec model answers stored users from their live recurrent state instead, advanced by the
events that arrived since their last request (``serving.user_state``).
Unknown users, or histories the model knows no item of, get the popularity list.

When a ranking model serves (the alias of ``registered_ranking_model``), /recommend retrieves
``serve_rank_candidates`` items, scores them with the ranker (one history encoding per request,
requests batched) and orders them by the blend of the task probabilities
(``serve_blend_weights``); /rank scores given candidates. Without one, /recommend is retrieval
alone and /rank answers 503. Each replica follows both aliases through its own
``ModelWatcher``s: swaps never touch the request path.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import numpy as np
from fastapi import HTTPException, Response
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp, Receive, Scope, Send

from infra.settings import ServeSettings
from serving.answer import Answer, Events, Request, Stored, answer_batch
from serving.api import (
    DeltaLineage,
    HistoryLineage,
    ItemsResponse,
    Lineage,
    RankRequest,
    RankResponse,
    RecommendRequest,
    RetrieveRequest,
    ScoredItem,
)
from serving.catalog import Catalog, load_catalog
from serving.config import APP_NAME, ServeConfig, production_config
from serving.deltas import DeltaFollower, IndexParams
from serving.history.store import OnlineHistory, UserHistory
from serving.metrics import ServingMetrics
from serving.ranker import Ranked, RankQuery, ServedRanker, blend, keep_unranked, load_ranker, rank_batch
from serving.registry import fail_fast_in_this_process, served_version
from serving.replicas import read_replica_states
from serving.user_state import LRURecStates
from serving.watcher import ModelWatcher
from training.streaming.deltas import MODEL_DELTAS_TABLE

logger = logging.getLogger("ray.serve.streamrec")  # into the replica logs of Ray Serve
GIVEN_HISTORY_ACTION = "click"  # a history given in the body: items consumed just now
Answered = TypeVar("Answered")
# The settings' defaults; each replica sets its own settings' values in __init__.
BATCH_SIZE_DEFAULT = ServeSettings.model_fields["batch_max_size"].default
BATCH_WAIT_DEFAULT_S = ServeSettings.model_fields["batch_wait_s"].default

# /docs and /redoc load Swagger UI and ReDoc from files the fastapi-offline package ships, not
# from a CDN: a cluster without internet access still renders them.
api = FastAPIOffline(
    title="streamrec serving",
    description="Retrieval and recommendations from the production model, with each user's live history.",
    max_body_size=ServeSettings.model_fields["max_body_bytes"].default,  # each replica: set_body_limit
)


def _now_ms() -> int:
    return int(time.time() * 1000)


class DeclaredBodyLimit:
    """A pure ASGI middleware (no task per request, unlike ``@app.middleware``): a request that
    declares a body over ``api.max_body_size`` gets 413 with the limit in its message before
    anything reads it; FastAPI's own limit stops an undeclared (streamed) body at the same size."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = api.max_body_size
        if scope["type"] == "http" and limit is not None:
            declared = dict(scope["headers"]).get(b"content-length", b"")
            if declared.isdigit() and int(declared) > limit:
                await JSONResponse({"detail": f"the body is over {limit} bytes"}, status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


api.add_middleware(DeclaredBodyLimit)


def set_body_limit(limit: int) -> None:
    """The largest request body the ingress reads (413 above it); each replica sets it before
    its first request, when FastAPI builds its middleware stack."""
    api.max_body_size = limit


def _open_history(config: ServeConfig, shard: int, shards: int) -> OnlineHistory:
    """The started online history of the partitions p with p % shards == shard (all for 1)."""
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # kafka-python logs a closing consumer as an error
    history = OnlineHistory(
        config.make_settings(),
        user_sequences_version=config.user_sequences_version,
        item_vocab_version=config.item_vocab_version,
        max_len=config.history_max_len,
        shard=(shard, shards) if shards > 1 else None,  # one shard: every partition, new ones too
    )
    history.start()
    return history


@serve.deployment(ray_actor_options={"num_cpus": 0})
class HistoryShard:
    """The online history of the partitions p with p % shards == shard."""

    def __init__(self, config: ServeConfig, shard: int, shards: int) -> None:
        self.shard = shard
        self.history = _open_history(config, shard, shards)

    def get(self, user_id: str) -> UserHistory | None:
        return self.history.get(user_id)

    def status(self) -> dict[str, Any]:
        return {"shard": self.shard, **self.history.status()}

    def __del__(self) -> None:
        self.history.stop()


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Recommender:
    """The HTTP ingress: answers from the current catalog and the shards' histories."""

    def __init__(self, config: ServeConfig, shards: list[DeploymentHandle]) -> None:
        import torch

        torch.set_num_threads(1)  # many small requests: one thread each beats contended intra-op threads
        settings = config.make_settings()
        fail_fast_in_this_process()  # the watchers ask the registry again every poll themselves
        self.settings = settings
        self.config = config
        self.shards = shards
        self.local_history = None if shards else _open_history(config, 0, 1)  # no shards: this replica's own
        set_body_limit(settings.serve.max_body_bytes)
        self.telemetry = ServingMetrics()
        self.states = LRURecStates(settings.serve.lrurec_state_users)  # used while an LRURec model serves

        def load_base(version: str) -> Catalog:
            return load_catalog(
                settings,
                version,
                exact_max_items=settings.serve.exact_max_items,
                hnsw_m=settings.serve.hnsw_m,
                ef_search=settings.serve.hnsw_ef_search,
            )

        # Model deltas of the served version: applied on load (a new or restarted replica starts at
        # the newest one) and then every delta_poll_s by the follower's thread (serving/deltas.py).
        self.follower: DeltaFollower | None = None
        if settings.serve.delta_poll_s > 0:
            self.follower = DeltaFollower(
                settings.table_uri(MODEL_DELTAS_TABLE),
                settings.mlflow.registered_model,
                IndexParams(
                    settings.serve.exact_max_items,
                    settings.serve.hnsw_m,
                    settings.serve.hnsw_ef_search,
                    settings.serve.delta_rebuild_fraction,
                    settings.serve.prefix_codec,
                ),
                poll_s=settings.serve.delta_poll_s,
                resolve=lambda: served_version(settings),
                reload=load_base,
                on_apply=self.telemetry.delta_applied,
            )
        follower = self.follower
        self.watcher: ModelWatcher[Catalog] = ModelWatcher(
            resolve=lambda: served_version(settings),
            load=load_base if follower is None else lambda version: follower.caught_up(load_base(version)),
            poll_s=settings.serve.model_poll_s,
            on_swap=self.telemetry.swapped,
        )
        self.ranker_watcher: ModelWatcher[ServedRanker] = ModelWatcher(
            resolve=lambda: served_version(settings, settings.mlflow.registered_ranking_model),
            load=lambda version: load_ranker(settings, version),
            poll_s=settings.serve.model_poll_s,
            on_swap=lambda swap: self.telemetry.swapped(swap, "ranking"),
        )
        self.watcher.load_now()
        self.ranker_watcher.load_now(required=False)  # no ranker yet: /recommend is retrieval alone
        self.watcher.start()
        self.ranker_watcher.start()
        if follower is not None:
            follower.start(lambda: self.watcher.current)
        batched: list[Any] = [self._search, self._rank]  # @serve.batch methods
        for method in batched:
            method.set_max_batch_size(settings.serve.batch_max_size)
            method.set_batch_wait_timeout_s(settings.serve.batch_wait_s)

    def __del__(self) -> None:
        if self.local_history is not None:
            self.local_history.stop()
        if self.follower is not None:
            self.follower.stop()

    def _catalog(self) -> Catalog | None:
        """What requests are answered from: the served version with the model deltas applied so far."""
        base = self.watcher.current
        return base if base is None or self.follower is None else self.follower.serving(base)

    # Endpoints ------------------------------------------------------------------------
    @api.post("/retrieve", response_model=ItemsResponse)
    async def retrieve(self, body: RetrieveRequest) -> ItemsResponse:
        """Top-k items for a stored user or a given history (seen items kept unless exclude_seen)."""
        return await self._timed("retrieve", self._items(body, rank=False))

    @api.post("/rank", response_model=RankResponse)
    async def rank(self, body: RankRequest) -> RankResponse:
        """Each task's probability for the candidates, best blended score first (503 without a ranker)."""
        return await self._timed("rank", self._ranked(body))

    @api.post("/recommend", response_model=ItemsResponse)
    async def recommend(self, body: RecommendRequest) -> ItemsResponse:
        """Recommendations: retrieval (seen items left out by default), then the ranker's order."""
        return await self._timed("recommend", self._items(body, rank=True))

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """The served model, its index, the last swap and load error, each history shard, and the
        deployment's replicas by state (degraded while fewer than ``serve.replicas`` run)."""
        retrieval, ranking = self.watcher.state, self.ranker_watcher.state  # each model with its swaps
        base = retrieval.current
        catalog = base if base is None or self.follower is None else self.follower.serving(base)
        delta_error = None if self.follower is None else self.follower.error
        if self.local_history is not None:
            shards: list[Any] = [{"shard": "in-replica", **self.local_history.status()}]
        else:
            shards = await asyncio.gather(*(shard.status.remote() for shard in self.shards), return_exceptions=True)
        shard_states: list[dict[str, Any]] = [
            state if isinstance(state, dict) else {"error": str(state)} for state in shards
        ]
        healthy = catalog is not None and all(state.get("running") for state in shard_states)
        ranker = ranking.current
        no_errors = self.watcher.last_error is None and self.ranker_watcher.last_error is None and delta_error is None
        replicas = await read_replica_states(APP_NAME, "Recommender")  # one died: fewer RUNNING until replaced
        all_running = replicas is None or replicas.get("RUNNING", 0) >= self.settings.serve.replicas
        body = {
            "status": "ok" if healthy and no_errors and all_running else ("degraded" if healthy else "down"),
            "replicas": replicas,
            "model": None
            if catalog is None
            else {
                "name": self.settings.mlflow.registered_model,
                "version": catalog.version,
                "run_id": catalog.run_id,
                "items": catalog.num_items,
                "index": catalog.index_kind,
                "feature_versions": catalog.feature_versions,
                "delta": None if catalog.delta is None else DeltaLineage.of(catalog.delta).model_dump(),
            },
            "alias": self.settings.serve.model_alias,
            "last_error": self.watcher.last_error,
            "swaps": [swap.__dict__ for swap in retrieval.swaps],
            "deltas": None if self.follower is None else self.follower.status(),
            "delta_last_error": delta_error,
            "ranking": None
            if ranker is None
            else {
                "name": self.settings.mlflow.registered_ranking_model,
                "version": ranker.version,
                "run_id": ranker.run_id,
                "tasks": list(ranker.tasks),
                "feature_versions": ranker.feature_versions,
            },
            "ranking_last_error": self.ranker_watcher.last_error,
            "ranking_swaps": [swap.__dict__ for swap in ranking.swaps],
            "history_shards": shard_states,
            "lrurec_states": self.states.status() if catalog is not None and self.states.follows(catalog) else None,
        }
        for state in shard_states:
            partitions: dict[str, dict[str, Any]] = state.get("partitions") or {}
            for partition, position in partitions.items():
                if position.get("lag") is not None:
                    self.telemetry.history_lag.labels(partition=str(partition)).set(position["lag"])
        return JSONResponse(body, status_code=200 if healthy else 503)

    @api.get("/metrics")
    async def prometheus(self) -> Response:
        """Prometheus metrics of this replica."""
        return Response(self.telemetry.render(), media_type=self.telemetry.content_type)

    # The request path -----------------------------------------------------------------
    async def _timed(self, endpoint: str, work: Awaitable[Answered]) -> Answered:
        started = time.perf_counter()
        status = "200"
        try:
            return await work
        except HTTPException as error:
            status = str(error.status_code)
            raise
        except Exception:
            status = "500"
            raise
        finally:
            self.telemetry.observe(endpoint, status, time.perf_counter() - started)

    async def _items(self, body: RetrieveRequest, rank: bool) -> ItemsResponse:
        """/retrieve and /recommend: retrieval, then (``rank`` and a ranker served) the ranker's order."""
        settings = self.settings
        if body.k > settings.serve.max_k:
            raise HTTPException(422, f"k={body.k} is over the limit of {settings.serve.max_k} (serve_max_k)")
        events, history, stored = await self._history(body.user_id, body.history)
        ranking = rank and self.ranker_watcher.current is not None
        wanted = max(body.k, settings.serve.rank_candidates) if ranking else body.k
        catalog, found, unknown, excluded, cold = await self._search((events, wanted, body.exclude_seen, stored))
        history.events = len(events) - unknown
        lineage = Lineage(
            model_version={settings.mlflow.registered_model: catalog.version},
            model_run_id={settings.mlflow.registered_model: catalog.run_id},
            feature_versions=catalog.feature_versions,
            delta=None if catalog.delta is None else DeltaLineage.of(catalog.delta),
            history=history,
        )
        if not ranking or cold:  # the popularity list of a cold start is served as it is
            items = [ScoredItem(item_id=str(catalog.item_ids[item]), score=score) for item, score in found[: body.k]]
        else:
            candidates = [str(catalog.item_ids[item]) for item, _ in found]
            ranked = await self._rank((events, candidates, _now_ms()))
            # keep_unranked takes at most k of the ranker's order: only those become ScoredItems.
            items = self._with_unranked(self._ordered(ranked, limit=body.k), candidates, found, ranked, body.k)
            self._add_ranker(lineage, ranked.ranker)
        return ItemsResponse(items=items, cold_start=cold, unknown_items=unknown, excluded=excluded, lineage=lineage)

    async def _ranked(self, body: RankRequest) -> RankResponse:
        """/rank: the served ranker's probabilities for the body's candidates."""
        limit = self.settings.serve.rank_max_candidates
        if len(body.candidates) > limit:
            raise HTTPException(422, f"{len(body.candidates)} candidates, over the limit of {limit}")
        if self.ranker_watcher.current is None:
            raise HTTPException(
                503, f"no ranking model is served: promote a version of {self.settings.mlflow.registered_ranking_model}"
            )
        events, history, _ = await self._history(body.user_id, body.history)
        ranked = await self._rank((events, body.candidates, _now_ms()))
        history.events = ranked.history_events
        ranker = ranked.ranker
        name = self.settings.mlflow.registered_ranking_model
        return RankResponse(
            items=self._ordered(ranked),
            unknown_candidates=ranked.unknown_candidates,
            unknown_items=len(events) - ranked.history_events,
            lineage=Lineage(
                model_version={name: ranker.version},
                model_run_id={name: ranker.run_id},
                feature_versions=ranker.feature_versions,
                history=history,
            ),
        )

    async def _history(
        self, user_id: str | None, given: list[str] | None
    ) -> tuple[Events, HistoryLineage, Stored | None]:
        """The events a request is answered from: the body's history, else the user's stored one
        (then also the user and the history's revision, for the LRURec states)."""
        if given is not None:
            limit = self.settings.serve.max_history_items
            if len(given) > limit:
                raise HTTPException(422, f"the history has {len(given)} items, over {limit}")
            now = _now_ms()
            lineage = HistoryLineage(source="request", events=0)
            return [(item_id, GIVEN_HISTORY_ACTION, now) for item_id in given], lineage, None
        stored = await self._stored_history(user_id or "")
        events = [(event.item_id, event.action, event.ts) for event in stored.events] if stored else []
        lineage = HistoryLineage(
            source="online" if stored else "none",
            events=0,
            partition=stored.partition if stored else None,
            offset=stored.applied_offset if stored else None,
            bootstrap_versions=self.config.bootstrap_versions,
        )
        revision = stored.revision if stored else None
        return events, lineage, None if stored is None or revision is None else (stored.user_id, revision)

    def _ordered(self, ranked: Ranked, limit: int | None = None) -> list[ScoredItem]:
        """The ranked candidates (the best ``limit``), best blended score first, each with its
        task probabilities."""
        tasks = ranked.ranker.tasks
        blended = blend(ranked.probabilities, tasks, self.settings.serve.blend_weights)
        order = np.argsort(-blended, kind="stable")[:limit]
        return [
            ScoredItem(
                item_id=ranked.item_ids[row],
                score=float(blended[row]),
                scores={task: float(p) for task, p in zip(tasks, ranked.probabilities[row].tolist(), strict=True)},
            )
            for row in order.tolist()
        ]

    @staticmethod
    def _with_unranked(
        items: list[ScoredItem], candidates: list[str], found: list[tuple[int, float]], ranked: Ranked, k: int
    ) -> list[ScoredItem]:
        """The ranked items with the candidates the ranker does not know at their retrieval places
        (``keep_unranked``), those scored by retrieval (no task probabilities)."""
        unranked = set(ranked.unknown_candidates)
        if not unranked:
            return items[:k]
        by_id = {item.item_id: item for item in items}
        retrieval_score = {item: score for item, (_, score) in zip(candidates, found, strict=True)}
        order = keep_unranked([item.item_id for item in items], candidates, unranked, k)
        return [by_id.get(item) or ScoredItem(item_id=item, score=retrieval_score[item]) for item in order]

    def _add_ranker(self, lineage: Lineage, ranker: ServedRanker) -> None:
        name = self.settings.mlflow.registered_ranking_model
        lineage.model_version[name] = ranker.version
        lineage.model_run_id[name] = ranker.run_id
        lineage.ranking_feature_versions = ranker.feature_versions

    async def _stored_history(self, user_id: str) -> UserHistory | None:
        if self.local_history is not None:
            return self.local_history.get(user_id)  # a lock and a copy of at most max_len events
        if len(self.shards) == 1:
            return await self.shards[0].get.remote(user_id)
        answers = await asyncio.gather(*(shard.get.remote(user_id) for shard in self.shards))
        return next((answer for answer in answers if answer is not None), None)

    @serve.batch(max_batch_size=BATCH_SIZE_DEFAULT, batch_wait_timeout_s=BATCH_WAIT_DEFAULT_S)
    async def _search(self, requests: list[Request]) -> list[Answer]:
        """Encode the batch's histories together and search; one catalog for the whole batch.

        Runs on the event loop, not in a worker thread: a query costs well under a millisecond,
        and in a thread every torch and FAISS call hands the GIL back and forth with the loop,
        which cost about 1 ms of CPU more per request at 200 requests/s (docs/serving.md)."""
        catalog = self._catalog()
        if catalog is None:
            raise HTTPException(503, "no model loaded yet")
        return answer_batch(catalog, requests, self.states)

    @serve.batch(max_batch_size=BATCH_SIZE_DEFAULT, batch_wait_timeout_s=BATCH_WAIT_DEFAULT_S)
    async def _rank(self, queries: list[RankQuery]) -> list[Ranked]:
        """Score the batch's candidates with one ranker (one history encoding per query)."""
        ranker = self.ranker_watcher.current
        if ranker is None:
            raise HTTPException(503, "no ranking model loaded")
        return await asyncio.to_thread(rank_batch, ranker, queries)


def build_app(config: ServeConfig) -> Any:
    """The serving application: ``serve_history_shards`` shards bound into the recommender
    (none: each recommender replica holds the history itself)."""
    settings = config.make_settings()
    count = settings.serve.history_shards
    shards = [
        HistoryShard.options(name=f"HistoryShard{shard}").bind(config, shard, count)  # type: ignore[attr-defined]
        for shard in range(count)
    ]
    return Recommender.options(  # type: ignore[attr-defined]
        num_replicas=settings.serve.replicas,
        max_ongoing_requests=settings.serve.max_ongoing_requests,
        max_queued_requests=settings.serve.max_queued_requests,
    ).bind(config, shards)


def app_from_settings(args: dict[str, str]) -> Any:
    """Application builder for Ray Serve's config files and KubeRay's RayService
    (import path ``serving.app:app_from_settings``): settings from the environment, ``args``
    as setting overrides (e.g. ``{"serve_replicas": "4"}``), the production model's config."""
    from infra.settings import get_settings

    return build_app(production_config(get_settings(**args)))

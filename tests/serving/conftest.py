"""Fixtures of the serving tests: a real pipeline run into a served model.

Synthetic events go to a topic of their own on the session's broker, are ingested exactly
once (Spark), become feature tables (ranking examples too), train a small HSTU retriever and
a small ranker on Ray Train, get registered under model names of their own, the retriever
promoted (the ranker is promoted by tests/serving/test_rank.py); then `serving.deploy` runs
the application on the session's Ray head. The tests talk to it over HTTP, as a product would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from features.build import build
from features.ranking import RankingSpec
from infra.settings import Settings, get_settings
from ingestion.producer import OutRecord, encode_event, open_producer
from ingestion.stream import run_ingest
from ingestion.synthetic import SyntheticConfig, generate_events
from serving.deploy import base_url, deploy, undeploy
from serving.registry import promote
from training.common.config import EncoderConfig
from training.ranking.config import RankerConfig, RankingTrainConfig
from training.ranking.runner import RankingOutcome, train_ranking
from training.retrieval.config import TrainConfig
from training.retrieval.runner import TrainOutcome, train

PARTITIONS = 4
SYNTHETIC = dict(users=120, items=300, events=6_000, clusters=10, seed=5, span_days=2)


@dataclass(frozen=True)
class Served:
    """The served pipeline: its settings, HTTP root, the run behind the production version and
    a registered ranking run (not promoted when the session starts)."""

    settings: Settings
    url: str
    run: TrainOutcome
    ranking_run: RankingOutcome
    users: list[str]


@dataclass(frozen=True)
class Landed:
    """Where a produced record landed."""

    partition: int
    offset: int


def create_topic(settings: Settings, partitions: int = PARTITIONS) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000)
    try:
        admin.create_topics([NewTopic(settings.topic, partitions, 1)])
    finally:
        admin.close()


def send(settings: Settings, records: list[OutRecord]) -> list[Landed]:
    """Send records to the settings' topic; where each landed."""
    producer = open_producer(settings)
    try:
        futures = [producer.send(settings.topic, key=record.key, value=record.value) for record in records]
        producer.flush()
        return [Landed(meta.partition, meta.offset) for meta in (future.get(timeout=30) for future in futures)]
    finally:
        producer.close()


def action(user_id: str, item_id: str, kind: str) -> OutRecord:
    """A valid event of ``user_id`` doing ``kind`` on ``item_id`` now."""
    event = {"event_id": f"e-{uuid.uuid4().hex}", "user_id": user_id, "item_id": item_id, "action": kind,
             "ts": int(time.time() * 1000)}  # fmt: skip
    return encode_event(event)


def wait_for(predicate: Callable[[], Any], timeout_s: float = 30.0, every_s: float = 0.1) -> Any:
    """The first true value of ``predicate()`` within ``timeout_s``; AssertionError after."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"not within {timeout_s} s")


def post(served: Served, path: str, body: object, **kwargs: object) -> requests.Response:
    return requests.post(f"{served.url}{path}", json=body, timeout=30, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def served(mini_cluster: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home: Path = tmp_path_factory.mktemp("serving-home")
    settings = get_settings(
        home=home,
        topic=f"serving-{uuid.uuid4().hex[:8]}",
        registered_model=f"serving-test-{uuid.uuid4().hex[:8]}",
        registered_ranking_model=f"serving-rank-{uuid.uuid4().hex[:8]}",
        train_workers=1,
        serve_model_poll_s=0.5,
        serve_history_shards=2,  # each owns two of the topic's four partitions
    )
    create_topic(settings)
    start_ms = int(time.time() * 1000) - 3 * 86_400_000
    events = list(generate_events(SyntheticConfig(**SYNTHETIC, start_ms=start_ms)))  # type: ignore[arg-type]
    send(settings, [encode_event(event) for event in events])
    run_ingest(settings, until_idle=True, report=lambda *_: None)
    build(settings, incremental=True, log=lambda *_: None, ranking=RankingSpec())
    encoder = EncoderConfig(kind="hstu", dim=32, max_len=50)
    config = TrainConfig(encoder=encoder, epochs=2, batch_size=32, patience=0)
    run = train(settings, config, log=lambda *_: None)
    ranking_config = RankingTrainConfig(model=RankerConfig(encoder=encoder), epochs=1, patience=0)
    ranking_run = train_ranking(settings, ranking_config, workers=1, log=lambda *_: None)
    promote(settings, run.model_version)
    deploy(settings)
    users = sorted({event["user_id"] for event in events})
    try:
        yield Served(settings, base_url(settings), run, ranking_run, users)
    finally:
        undeploy(settings)

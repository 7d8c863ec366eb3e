"""The trained pipeline the serving and training tests share: synthetic events on a topic of
their own, ingested once (Spark), feature tables (ranking examples too), a small HSTU retriever
on two Ray Train workers and a small ranker, registered under model names of their own."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from infra.settings import Settings, get_settings
from ingestion.producer import OutRecord, encode_event, open_producer
from ingestion.synthetic import SyntheticConfig, default_start_ms, generate_events
from training.common.config import EncoderConfig
from training.retrieval.config import TrainConfig

if TYPE_CHECKING:
    from training.ranking.runner import RankingOutcome
    from training.retrieval.runner import TrainOutcome

PARTITIONS = 4
# 300 users, 1000 items in 20 clusters: small enough for about a second per epoch on 2 cores,
# structured enough that sequence models beat popularity by far. The clock ends about a day
# ago (the ingest refuses events from the future; serving reads them back from the topic).
# A fixed clock (the default span of 28 days) so tests can place later events after these.
EVENTS = SyntheticConfig(users=300, items=1_000, events=30_000, clusters=20, seed=0, start_ms=default_start_ms(28.0))


@dataclass(frozen=True)
class TrainedPipeline:
    """A lake built from ``events`` through the broker, its retrieval run (not promoted) and
    its ranking run (not promoted), on the session's mini-cluster."""

    settings: Settings
    events: SyntheticConfig
    run: TrainOutcome
    ranking_run: RankingOutcome
    users: list[str]


@dataclass(frozen=True)
class Landed:
    """Where a produced record landed."""

    partition: int
    offset: int


def tiny_config(kind: str = "hstu", **overrides: object) -> TrainConfig:
    """A small model and short run that still learns the synthetic structure."""
    encoder = EncoderConfig(kind=kind, dim=32, max_len=50)
    return TrainConfig(encoder=encoder, **{"epochs": 6, "batch_size": 32, "patience": 0, **overrides})


def create_topic(settings: Settings, partitions: int = PARTITIONS) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap, request_timeout_ms=10_000)
    try:
        admin.create_topics([NewTopic(settings.kafka.topic, partitions, 1)])
    finally:
        admin.close()


def send(settings: Settings, records: list[OutRecord]) -> list[Landed]:
    """Send records to the settings' topic; where each landed."""
    producer = open_producer(settings)
    try:
        futures = [producer.send(settings.kafka.topic, key=record.key, value=record.value) for record in records]
        producer.flush()
        return [Landed(meta.partition, meta.offset) for meta in (future.get(timeout=30) for future in futures)]
    finally:
        producer.close()


def train_pipeline(home: Path) -> TrainedPipeline:
    """Produce, ingest, build and train into ``home`` (minutes); the session cluster must be up."""
    from features.build import build
    from features.ranking import RankingSpec
    from ingestion.stream import run_ingest
    from training.ranking.config import RankerConfig, RankingTrainConfig
    from training.ranking.runner import train_ranking
    from training.retrieval.runner import train

    suffix = uuid.uuid4().hex[:8]
    settings = get_settings(
        home=home,
        topic=f"pipeline-{suffix}",
        registered_model=f"pipeline-retrieval-{suffix}",
        registered_ranking_model=f"pipeline-ranking-{suffix}",
        train_workers=2,  # the item table row-wise sharded over two workers
        train_max_failures=1,
    )
    create_topic(settings)
    events = list(generate_events(EVENTS))
    send(settings, [encode_event(event) for event in events])
    run_ingest(settings, until_idle=True, report=lambda *_: None)
    build(settings, incremental=True, log=lambda *_: None, ranking=RankingSpec())
    config = tiny_config("hstu")
    run = train(settings, config, log=lambda *_: None)
    ranking_config = RankingTrainConfig(model=RankerConfig(encoder=config.encoder), epochs=1, patience=0)
    ranking_run = train_ranking(settings, ranking_config, workers=1, log=lambda *_: None)
    users = sorted({event["user_id"] for event in events})
    return TrainedPipeline(settings, EVENTS, run, ranking_run, users)

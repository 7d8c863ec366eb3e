"""Fixtures of the ingestion tests: one local Spark session for the in-process stream tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.settings import Settings


@pytest.fixture(scope="session")
def spark(kafka_broker: Settings) -> Iterator[object]:
    """A local Spark session with the Kafka source registered (started once)."""
    from infra.spark import spark_session
    from ingestion.kafka_source import KafkaDataSource

    session = spark_session(kafka_broker, "streamrec-ingestion-tests")
    session.sparkContext.setLogLevel("ERROR")
    session.dataSource.register(KafkaDataSource)
    yield session

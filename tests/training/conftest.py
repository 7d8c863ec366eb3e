"""Fixtures of the training tests: a lake of synthetic sequential events (real feature
build) and runs on the session's real Ray head and MLflow server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lakedata import EVENTS, append_events, tiny_config

from infra.settings import Settings, get_settings
from ingestion.synthetic import generate_events
from training.retrieval.runner import TrainOutcome, train


@pytest.fixture(scope="session")
def lake_home(mini_cluster: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose lake holds silver events and feature tables built from them."""
    home = tmp_path_factory.mktemp("training-home")
    append_events(get_settings(home=home), generate_events(EVENTS))
    return home


@pytest.fixture(scope="session")
def settings(lake_home: Path) -> Settings:
    """Settings of the training tests: their own lake and checkpoints, the session cluster."""
    return get_settings(home=lake_home, train_workers=2, train_max_failures=1)


@pytest.fixture(scope="session")
def hstu_run(settings: Settings) -> Iterator[TrainOutcome]:
    """One 2-worker HSTU run (row-wise sharded item table), registered in MLflow."""
    yield train(settings, tiny_config("hstu"))

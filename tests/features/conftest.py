"""Fixtures of the features tests: one Spark session and the local Ray head."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra import cluster, ray_access
from infra.settings import Settings, get_settings


@pytest.fixture(scope="session")
def ray_head() -> Iterator[Settings]:
    """The session's local Ray head (started once, shared with other areas), connected."""
    import ray

    settings = get_settings()
    cluster.up(settings, ["ray"])
    connected_here = not ray.is_initialized()
    if connected_here:
        ray_access.connect(settings, logging_level="warning", log_to_driver=False)
    yield settings
    if connected_here:  # disconnect before the session's cluster goes down
        ray.shutdown()


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One local Spark session for every features test (builds reuse it)."""
    from infra.spark import spark_session

    session = spark_session(get_settings(), "streamrec-features-tests")
    yield session
    session.stop()

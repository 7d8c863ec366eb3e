"""Shared fixtures: an isolated streamrec home and a real local mini-cluster.

At session start every ``STREAMREC_*`` address is pointed at free loopback ports and a
temporary home, so tests never touch a developer's own cluster and may run beside it.
In-process code and subprocesses (the `streamrec` CLI, Spark, Ray workers) all read
these variables through ``infra.settings.get_settings()``.

``HOME`` points at a temporary directory as well: Ray keeps (and, for a new local
``ray.init()`` cluster, writes) its token at ~/.ray/auth_token, and a token there turns
authentication on for every later `ray start` on the machine. The suite never reads or
writes the real one; the test cluster's token lives in the temporary streamrec home.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import cluster
from infra.processes import free_port
from infra.settings import Settings, get_settings

_TEST_ENV: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    home = Path(tempfile.mkdtemp(prefix="streamrec-test-"))
    (home / "user-home").mkdir()
    _TEST_ENV.update(
        HOME=str(home / "user-home"),
        STREAMREC_HOME=str(home),
        STREAMREC_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
        STREAMREC_MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}",
        STREAMREC_RAY_ADDRESS=f"127.0.0.1:{free_port()}",
        STREAMREC_RAY_DASHBOARD_PORT=str(free_port()),
        STREAMREC_RAY_CLIENT_PORT=str(free_port()),
        STREAMREC_SERVE_PORT=str(free_port()),
        STREAMREC_DAGSTER_PORT=str(free_port()),
        STREAMREC_EXTERNAL="",
        STREAMREC_LAKE_URI="",
        STREAMREC_RAY_AUTH="token",
        # Named explicitly: tests that give settings another home still reach the session's cluster.
        STREAMREC_RAY_AUTH_TOKEN_FILE=str(home / "ray" / "auth_token"),
    )
    os.environ.pop("STREAMREC_CONFIG", None)
    os.environ.update(_TEST_ENV)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _TEST_ENV:
        cluster.down(get_settings())


@pytest.fixture(scope="session")
def test_env() -> dict[str, str]:
    """The STREAMREC_* variables (and HOME) of this test session (for subprocesses)."""
    return dict(_TEST_ENV)


@pytest.fixture(scope="session")
def mini_cluster() -> Iterator[Settings]:
    """The real local mini-cluster (broker, MLflow, Ray head), started once per session."""
    settings = get_settings()
    cluster.up(settings)
    yield settings


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Settings]:
    """Just the local Kafka-protocol broker (faster to start than the whole cluster)."""
    settings = get_settings()
    cluster.up(settings, ["kafka"])
    yield settings

"""Shared fixtures: an isolated streamrec home and a real local mini-cluster.

At session start every ``STREAMREC_*`` address is pointed at free loopback ports and a
temporary home, so tests never touch a developer's own cluster and may run beside it.
In-process code and subprocesses (the `streamrec` CLI, Spark, Ray workers) all read
these variables through ``infra.settings.get_settings()``.

Tiers are assigned here, by fixture: a test that uses (directly or through another fixture)
one that starts a real service is marked ``integration``, one that runs several services as a
loop ``e2e`` (see ``SERVICE_FIXTURES``). Tests that start services by other means (a `streamrec
up` subprocess, Spark inside the code under test) carry the marker by hand. `make test-fast`
runs the rest; an unmarked test that starts the cluster, Spark or a Ray driver fails (``_fast_tier_guard``).

``HOME`` points at a temporary directory as well: Ray keeps (and, for a new local
``ray.init()`` cluster, writes) its token at ~/.ray/auth_token, and a token there turns
authentication on for every later `ray start` on the machine. The suite never reads or
writes the real one; the test cluster's token lives in the temporary streamrec home.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from infra import cluster
from infra.processes import free_port
from infra.settings import Settings, get_settings

if TYPE_CHECKING:
    from pipelinedata import TrainedPipeline

_TEST_ENV: dict[str, str] = {}

# Fixtures that start a real service, and the tier of every test that uses one. A test that
# needs several takes the highest (e2e over integration). Fixtures defined in a test module
# count too: they are matched by name.
SERVICE_FIXTURES: dict[str, str] = {
    "mini_cluster": "integration",  # broker, MLflow and the Ray head
    "kafka_broker": "integration",
    "ray_head": "integration",  # tests/features/conftest.py
    "spark": "integration",  # tests/features/conftest.py, tests/ingestion/conftest.py
    "trained_pipeline": "integration",  # ingest, features and training on the mini-cluster
    "served": "integration",  # tests/serving/conftest.py: the trained pipeline deployed on Ray Serve
    "loop": "e2e",  # tests/workflows/test_workflow_loop.py: ingest -> features -> train -> gate
    "cluster_env": "e2e",  # tests/infra/test_cluster_profile.py: the multi-node cluster profile
}
TIERS = ("integration", "e2e")
# `make test` runs on two pytest-xdist workers (`-n 2 --dist loadgroup`). The service tests go in
# two lanes, each an xdist group run in order on one worker with that worker's own session
# cluster (every worker has its own home and ports: pytest_configure); the unit tests fill
# whichever worker is free. A lane is the top-level test folder's: the pipeline lane holds every
# user of the session's trained pipeline (built once, in that worker), the platform lane the
# rest. The two lanes took about 1,150 and 1,230 s one after the other (--durations, loaded).
PIPELINE_LANE = ("training", "serving", "workflows")


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
        # The session cluster needs no scheduler; Dagster's own tests turn it on.
        STREAMREC_DAGSTER_ENABLED="false",
        # Named explicitly: tests that give settings another home still reach the session's cluster.
        STREAMREC_RAY_AUTH_TOKEN_FILE=str(home / "ray" / "auth_token"),
    )
    os.environ.pop("STREAMREC_CONFIG", None)
    os.environ.update(_TEST_ENV)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the markers added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a service fixture with that fixture's tier; fail collection
    when no test uses one of them any more (renamed: its tests would drop into the fast tier)."""
    used = {name for item in items for name in getattr(item, "fixturenames", ())}
    unused = sorted(set(SERVICE_FIXTURES) - used)
    if unused and _collected_everything(config):
        raise pytest.UsageError(f"no test uses these SERVICE_FIXTURES of tests/conftest.py (renamed?): {unused}")
    for item in items:
        tiers = {SERVICE_FIXTURES[name] for name in getattr(item, "fixturenames", ()) if name in SERVICE_FIXTURES}
        for tier in TIERS:
            if tier in tiers and item.get_closest_marker(tier) is None:
                item.add_marker(tier)
        if _tier_of(item):
            item.add_marker(pytest.mark.xdist_group(lane_of(item.path, config.rootpath)))


def lane_of(path: Path, root: Path) -> str:
    """The xdist group of a service test: ``pipeline`` or ``platform`` by its top-level folder."""
    folder = path.relative_to(root / "tests").parts[0]
    return "pipeline" if folder in PIPELINE_LANE else "platform"


def _collected_everything(config: pytest.Config) -> bool:
    """Whether the whole tests/ tree was collected (a run of one file does not define every fixture)."""
    return [Path(arg).resolve() for arg in config.args] == [Path(config.rootpath, "tests").resolve()]


def _tier_of(item: pytest.Item) -> str:
    return next((tier for tier in TIERS if item.get_closest_marker(tier) is not None), "")


@pytest.fixture(autouse=True)
def _fast_tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test of the fast tier that starts the cluster, a Spark session or a Ray driver fails, naming why:
    it is mis-tiered (give it a service fixture or an ``integration`` marker)."""
    if _tier_of(request.node):
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{request.node.nodeid} starts a service but is not marked integration or e2e")

    monkeypatch.setattr("infra.cluster.up", refuse)
    monkeypatch.setattr("infra.spark.spark_session", refuse)
    monkeypatch.setattr("infra.ray_access.connect", refuse)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _TEST_ENV:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            # A driver still connected when its cluster stops is ended by Ray 60 s later with
            # exit status 1, whatever the tests said (seen running test_sweep_ray.py alone).
            ray.shutdown()
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


@pytest.fixture(scope="session")
def trained_pipeline(mini_cluster: Settings, tmp_path_factory: pytest.TempPathFactory) -> TrainedPipeline:
    """Synthetic events -> broker -> ingest -> features -> a retriever and a ranker registered in
    MLflow (neither promoted), built once per session and shared by the serving and training
    tests (tests/pipelinedata.py). Tests read it and may register or promote versions of its
    models; none may change its lake (copy it first)."""
    from pipelinedata import train_pipeline

    return train_pipeline(tmp_path_factory.mktemp("pipeline-home"))

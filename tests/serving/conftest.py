"""Fixtures of the serving tests: the session's trained pipeline (tests/pipelinedata.py) served.

Its retriever is promoted (the ranker is promoted by tests/serving/test_rank.py); then
`serving.deploy` runs the application on the session's Ray head. The tests talk to it over
HTTP, as a product would (helpers in servingdata.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from pipelinedata import TrainedPipeline
from servingdata import Served, wait_for

from infra.settings import get_settings
from serving.deploy import base_url, deploy, undeploy
from serving.registry import promote, served_version


@pytest.fixture(scope="session")
def served(trained_pipeline: TrainedPipeline) -> Iterator[Served]:
    pipeline = trained_pipeline
    settings = get_settings(
        home=pipeline.settings.home,
        topic=pipeline.settings.kafka.topic,
        registered_model=pipeline.settings.mlflow.registered_model,
        registered_ranking_model=pipeline.settings.mlflow.registered_ranking_model,
        serve_model_poll_s=0.5,
        serve_history_shards=2,  # each owns two of the topic's four partitions
    )
    promote(settings, pipeline.run.model_version)
    deploy(settings)
    try:
        yield Served(settings, base_url(settings), pipeline.run, pipeline.ranking_run, pipeline.users)
    finally:
        undeploy(settings)


@pytest.fixture(autouse=True)
def _served_as_deployed(request: pytest.FixtureRequest) -> None:
    """Before a test that uses the served app: the app as the session deployed it, whatever
    an earlier test did to it (promoted another version, took serving down and brought it
    back with other settings), so no test depends on which ones ran before it. The ranker is
    put back only where one is promoted (tests/serving/test_rank.py promotes it)."""
    if "served" not in request.fixturenames:
        return
    served: Served = request.getfixturevalue("served")
    settings = served.settings
    try:
        shards = len(requests.get(f"{served.url}/healthz", timeout=10).json()["history_shards"])
    except requests.RequestException:
        shards = -1  # serving is down
    if shards != settings.serve.history_shards:
        deploy(settings)
    if served_version(settings) != served.run.model_version:
        promote(settings, served.run.model_version)
    ranking = served_version(settings, settings.mlflow.registered_ranking_model)
    ranking_wanted = served.ranking_run.model_version if ranking is not None else None
    if ranking not in (None, ranking_wanted):
        promote(settings, served.ranking_run.model_version, model=settings.mlflow.registered_ranking_model)

    def as_deployed() -> bool:
        health = requests.get(f"{served.url}/healthz", timeout=10).json()
        ranking = None if health["ranking"] is None else str(health["ranking"]["version"])
        return (health["model"] or {}).get("version") == served.run.model_version and ranking == ranking_wanted

    wait_for(as_deployed, timeout_s=60)

"""Launching and following a Dagster run through the webserver's GraphQL API, against the
installed schema and a fake webserver (the real one: the demo, tests/workflows/test_demo.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra import dagster_runs
from infra.dagster_automation import DagsterApiError
from infra.dagster_runs import (
    JOBS_QUERY,
    LAUNCH_RUN,
    MATERIALIZATIONS_QUERY,
    RUN_QUERY,
    launch_run,
    run_materializations,
    run_url,
    wait_for_run,
)
from infra.settings import Settings, get_settings

REPOSITORIES = {
    "repositoriesOrError": {
        "__typename": "RepositoryConnection",
        "nodes": [
            {"name": "__repository__", "location": {"name": "workflows.definitions"}, "jobs": [{"name": "loop_job"}]}
        ],
    }
}


class FakeWebserver:
    """Answers the queries: the repositories, a launch, the run's statuses in turn, its materialisations."""

    def __init__(
        self,
        launch: dict[str, Any],
        statuses: list[str],
        steps: list[dict[str, str]] | None = None,
        materializations: list[dict[str, Any]] | None = None,
    ):
        self.launch, self.statuses, self.steps = launch, list(statuses), steps or []
        self.materializations = materializations or []
        self.calls: list[tuple[str, dict[str, Any] | None]] = []

    def __call__(self, settings: Settings, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        self.calls.append((query, variables))
        if query == JOBS_QUERY:
            return REPOSITORIES
        if query == LAUNCH_RUN:
            return {"launchRun": self.launch}
        if query == MATERIALIZATIONS_QUERY:
            return {"runOrError": {"__typename": "Run", "assetMaterializations": self.materializations}}
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return {"runOrError": {"__typename": "Run", "status": status, "stepStats": self.steps}}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return get_settings(home=tmp_path)


def test_every_query_is_valid_for_the_installed_dagster() -> None:
    from dagster_graphql.schema import create_schema
    from graphql import parse, validate

    schema = create_schema().graphql_schema
    for query in (JOBS_QUERY, LAUNCH_RUN, RUN_QUERY, MATERIALIZATIONS_QUERY):
        assert validate(schema, parse(query)) == [], query


def test_a_launch_names_the_job_where_it_is_defined_and_is_followed_to_its_end(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeWebserver({"__typename": "LaunchRunSuccess", "run": {"runId": "r1"}}, ["QUEUED", "STARTED", "SUCCESS"])
    monkeypatch.setattr(dagster_runs, "graphql", fake)
    run_id = launch_run(settings, "loop_job", {"ops": {"x": {"config": {}}}})
    assert run_id == "r1"
    params = fake.calls[1][1]
    assert params is not None and params["params"] == {
        "selector": {"repositoryLocationName": "workflows.definitions", "repositoryName": "__repository__",
                     "jobName": "loop_job"},
        "runConfigData": {"ops": {"x": {"config": {}}}},
    }  # fmt: skip
    seen: list[str] = []
    end = wait_for_run(settings, run_id, 10, interval_s=0, on_change=seen.append)
    assert end.succeeded and seen == ["QUEUED", "STARTED", "SUCCESS"]
    assert run_url(settings, "r1") == f"{settings.dagster.url}/runs/r1"


def test_a_failed_run_names_its_failed_steps_and_a_slow_one_times_out(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = [{"stepKey": "ingest", "status": "SUCCESS"}, {"stepKey": "retrieval_model", "status": "FAILURE"}]
    monkeypatch.setattr(dagster_runs, "graphql", FakeWebserver({}, ["FAILURE"], steps))
    end = wait_for_run(settings, "r2", 10, interval_s=0)
    assert not end.succeeded and end.failed_steps == {"retrieval_model": "FAILURE"}

    monkeypatch.setattr(dagster_runs, "graphql", FakeWebserver({}, ["STARTED"]))
    with pytest.raises(TimeoutError, match="still STARTED"):
        wait_for_run(settings, "r3", 0.05, interval_s=0.01)


def test_a_refused_launch_or_an_unknown_job_says_why(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    invalid = {"__typename": "RunConfigValidationInvalid", "errors": [{"message": "Missing required config entry"}]}
    monkeypatch.setattr(dagster_runs, "graphql", FakeWebserver(invalid, ["SUCCESS"]))
    with pytest.raises(DagsterApiError, match="RunConfigValidationInvalid.*Missing required config entry"):
        launch_run(settings, "loop_job", {})
    with pytest.raises(DagsterApiError, match="defines the job ranking_job"):
        launch_run(settings, "ranking_job", {})


def test_a_launch_carries_the_run_tags(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeWebserver({"__typename": "LaunchRunSuccess", "run": {"runId": "r4"}}, ["SUCCESS"])
    monkeypatch.setattr(dagster_runs, "graphql", fake)
    launch_run(settings, "loop_job", {}, tags={"streamrec/candidate_version": "3"})
    params = fake.calls[1][1]
    assert params is not None
    assert params["params"]["executionMetadata"] == {"tags": [{"key": "streamrec/candidate_version", "value": "3"}]}


def test_a_runs_materialisations_read_back_as_plain_values(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each kind of entry as the webserver answers it: JSON parsed, numbers from their repr (an int
    beyond 32 bits, a NaN), null as None; an entry without a plain value (a table) is left out."""
    entries = [
        {"__typename": "TextMetadataEntry", "label": "decision", "text": "promoted"},
        {"__typename": "BoolMetadataEntry", "label": "promoted", "boolValue": True},
        {"__typename": "IntMetadataEntry", "label": "rows", "intRepr": "8589934592"},
        {"__typename": "FloatMetadataEntry", "label": "threshold", "floatRepr": "nan"},
        {"__typename": "FloatMetadataEntry", "label": "ndcg", "floatRepr": "0.09341"},
        {"__typename": "JsonMetadataEntry", "label": "window", "jsonString": '{"targets": 812}'},
        {"__typename": "NullMetadataEntry", "label": "production_value"},
        {"__typename": "TableMetadataEntry", "label": "sample"},
    ]
    materializations = [
        {"assetKey": {"path": ["retrieval_promotion"]}, "metadataEntries": entries},
        {"assetKey": {"path": ["features", "user_sequences"]}, "metadataEntries": []},
    ]
    monkeypatch.setattr(dagster_runs, "graphql", FakeWebserver({}, ["SUCCESS"], materializations=materializations))
    found = run_materializations(settings, "r5")
    assert set(found) == {"retrieval_promotion", "features/user_sequences"}
    recorded = found["retrieval_promotion"]
    threshold = recorded.pop("threshold")
    assert threshold != threshold  # NaN
    assert recorded == {
        "decision": "promoted",
        "promoted": True,
        "rows": 8_589_934_592,
        "ndcg": 0.09341,
        "window": {"targets": 812},
        "production_value": None,
    }

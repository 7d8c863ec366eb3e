"""Dagster's schedules and sensors through the webserver's GraphQL API (infra.dagster_automation)
and how `streamrec up --continual` and `streamrec status` use it, without a running Dagster:
the queries are checked against the installed Dagster's schema, the webserver is a fake."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from infra import cli, cluster, dagster_automation, dagster_runs
from infra.cluster import ComponentState
from infra.components import DagsterWorkflows
from infra.dagster_automation import (
    AUTOMATION_QUERY,
    LOOP_RUNS_QUERY,
    LOOP_TAG,
    START_SCHEDULE,
    START_SENSOR,
    STOP_SCHEDULE,
    STOP_SENSOR,
    DagsterApiError,
    Instigator,
    parse_instigators,
    set_loop,
    to_switch,
)
from infra.processes import free_port
from infra.settings import Settings, get_settings

LOOP = [{"key": LOOP_TAG, "value": "continual"}]


def _state(status: str, *ticks: dict[str, Any], name: str = "x") -> dict[str, Any]:
    return {"id": f"state-{name}", "status": status, "ticks": list(ticks)}


def _answer(running: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """An answer to AUTOMATION_QUERY as the webserver gives it: two loop schedules, one other
    schedule, two loop sensors, in no particular order."""

    def status(name: str) -> str:
        return "RUNNING" if name in running else "STOPPED"

    schedules = [
        ("hourly_warm_start_training", "0 * * * *", LOOP),
        ("daily_full_retraining", "30 3 * * *", []),
        ("ingest_every_15_minutes", "*/15 * * * *", LOOP),
    ]
    ticks = {
        "silver_events_sensor": [{"timestamp": 1_780_000_000.5, "status": "SKIPPED", "skipReason": "still at 3"}],
        "registered_model_sensor": [
            {"timestamp": 1_780_000_060.0, "status": "FAILURE", "error": {"message": "ConnectionError: mlflow\nmore"}}
        ],
        "ingest_every_15_minutes": [{"timestamp": 1_780_000_900.0, "status": "SUCCESS", "runIds": ["a"]}],
    }
    node = {
        "name": "__repository__",
        "location": {"name": "workflows.definitions"},
        "schedules": [
            {
                "name": name,
                "cronSchedule": cron,
                "executionTimezone": "UTC",
                "tags": tags,
                "scheduleState": _state(status(name), *ticks.get(name, []), name=name),
            }
            for name, cron, tags in schedules
        ],
        "sensors": [
            {
                "name": name,
                "minIntervalSeconds": interval,
                "tags": LOOP,
                "sensorState": _state(status(name), *ticks.get(name, []), name=name),
            }
            for name, interval in (("silver_events_sensor", 30), ("registered_model_sensor", 60))
        ],
    }
    return {"repositoriesOrError": {"__typename": "RepositoryConnection", "nodes": [node]}}


class FakeDagster:
    """The webserver's GraphQL endpoint: answers AUTOMATION_QUERY from its state, applies the
    four mutations (recording each) or refuses them with an Error, as Dagster does."""

    def __init__(self, running: set[str] | None = None, refuse: bool = False, runs: list[str] | None = None) -> None:
        self.running = set(running or ())
        self.refuse = refuse
        self.runs = list(runs or ())  # unfinished runs tagged to stop with the loop
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, settings: Settings, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        if query == AUTOMATION_QUERY:
            return _answer(self.running)
        if query == LOOP_RUNS_QUERY:
            self.calls.append(("runsOrError", variables or {}))
            return {"runsOrError": {"__typename": "Runs", "results": [{"runId": run} for run in self.runs]}}
        if query == dagster_runs.TERMINATE_RUN:
            self.calls.append(("terminateRun", variables or {}))
            return {"terminateRun": {"__typename": "TerminateRunSuccess"}}
        field = {START_SCHEDULE: "startSchedule", STOP_SCHEDULE: "stopRunningSchedule"}.get(query) or {
            START_SENSOR: "startSensor",
            STOP_SENSOR: "stopSensor",
        }.get(query)
        assert field is not None, query
        self.calls.append((field, variables or {}))
        if self.refuse:
            return {field: {"__typename": "UnauthorizedError", "message": "read-only webserver\ntrace"}}
        selector = (variables or {}).get("selector", {})
        if field.startswith("start"):
            self.running.add(selector.get("scheduleName") or selector["sensorName"])
        else:
            self.running.discard((variables or {})["id"].removeprefix("state-"))
        typename = {"startSensor": "Sensor", "stopSensor": "StopSensorMutationResult"}.get(field, "ScheduleStateResult")
        return {field: {"__typename": typename}}


def test_every_query_is_valid_for_the_installed_dagster() -> None:
    from dagster_graphql.schema import create_schema
    from graphql import parse, validate

    schema = create_schema().graphql_schema
    for query in (AUTOMATION_QUERY, START_SCHEDULE, STOP_SCHEDULE, START_SENSOR, STOP_SENSOR, LOOP_RUNS_QUERY):
        assert validate(schema, parse(query)) == [], query


def test_parse_reads_state_tags_and_last_tick() -> None:
    found = {i.name: i for i in parse_instigators(_answer({"silver_events_sensor"}))}
    assert [i.kind for i in parse_instigators(_answer())] == ["schedule"] * 3 + ["sensor"] * 2
    assert {name for name, i in found.items() if i.loop} == {
        "hourly_warm_start_training",
        "ingest_every_15_minutes",
        "silver_events_sensor",
        "registered_model_sensor",
    }
    silver = found["silver_events_sensor"]
    assert (silver.running, silver.state, silver.timing) == (True, "running", "every 30 s")
    assert silver.last_tick is not None and silver.last_tick.when == "2026-05-28 20:26:40 UTC"
    assert (silver.last_tick.status, silver.last_tick.note) == ("skipped", "still at 3")
    failed = found["registered_model_sensor"].last_tick
    assert failed is not None and (failed.status, failed.note) == ("failure", "ConnectionError: mlflow")
    ingest = found["ingest_every_15_minutes"]
    assert ingest.timing == "*/15 * * * * (UTC)" and ingest.state == "stopped"
    assert ingest.last_tick is not None and ingest.last_tick.note == "1 run(s) requested"
    assert found["daily_full_retraining"].last_tick is None
    assert (ingest.location, ingest.repository) == ("workflows.definitions", "__repository__")


def test_parse_says_why_when_the_repositories_did_not_load() -> None:
    with pytest.raises(DagsterApiError, match="could not list its repositories: boom"):
        parse_instigators({"repositoriesOrError": {"__typename": "PythonError", "message": "boom"}})


def test_to_switch_takes_only_loop_instigators_in_the_other_state() -> None:
    instigators = parse_instigators(_answer({"silver_events_sensor", "daily_full_retraining"}))
    assert [i.name for i in to_switch(instigators, True)] == [
        "hourly_warm_start_training",
        "ingest_every_15_minutes",
        "registered_model_sensor",
    ]
    assert [i.name for i in to_switch(instigators, False)] == ["silver_events_sensor"]  # not the daily one


def test_set_loop_starts_by_selector_and_stops_by_state_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = get_settings(home=tmp_path)
    fake = FakeDagster(running={"silver_events_sensor"}, runs=["r-follow"])
    monkeypatch.setattr(dagster_automation, "graphql", fake)
    monkeypatch.setattr(dagster_runs, "graphql", fake)
    switched = set_loop(settings, on=True)
    assert [i.name for i in switched] == [
        "hourly_warm_start_training",
        "ingest_every_15_minutes",
        "registered_model_sensor",
    ]
    where = {"repositoryLocationName": "workflows.definitions", "repositoryName": "__repository__"}
    assert fake.calls[0] == ("startSchedule", {"selector": {**where, "scheduleName": "hourly_warm_start_training"}})
    assert fake.calls[2] == ("startSensor", {"selector": {**where, "sensorName": "registered_model_sensor"}})
    assert dagster_automation.loop_note(switched, on=True).startswith("loop on: hourly_warm_start_training, ")
    fake.calls.clear()
    assert set_loop(settings, on=True) == [] and fake.calls == []  # already on: nothing sent
    assert dagster_automation.loop_note([], on=True) == "loop already on"
    assert len(set_loop(settings, on=False)) == 4
    assert ("stopRunningSchedule", {"id": "state-ingest_every_15_minutes"}) in fake.calls
    assert ("stopSensor", {"id": "state-silver_events_sensor"}) in fake.calls
    assert fake.running == set()
    # Off terminates the follow job's run too, after the sensors are stopped (none starts another).
    assert fake.calls[-2][0] == "runsOrError" and fake.calls[-1] == ("terminateRun", {"id": "r-follow"})
    assert fake.calls[-2][1]["filter"]["tags"] == [{"key": "streamrec/stops_with_loop", "value": "true"}]


def test_set_loop_raises_what_dagster_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dagster_automation, "graphql", FakeDagster(refuse=True))
    with pytest.raises(DagsterApiError, match="refused to start hourly_warm_start_training: read-only webserver$"):
        set_loop(get_settings(home=tmp_path), on=True)


def test_set_loop_raises_when_no_definition_is_tagged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    untagged = _answer()
    for node in untagged["repositoriesOrError"]["nodes"]:
        for definition in node["schedules"] + node["sensors"]:
            definition["tags"] = []
    monkeypatch.setattr(dagster_automation, "graphql", lambda *args, **kwargs: untagged)
    with pytest.raises(DagsterApiError, match="tag no schedule or sensor streamrec/loop"):
        set_loop(get_settings(home=tmp_path), on=True)


def test_graphql_without_a_webserver_is_a_clear_error(tmp_path: Path) -> None:
    settings = get_settings(home=tmp_path, dagster_port=free_port())
    with pytest.raises(DagsterApiError, match=f"no answer from the Dagster webserver at {settings.dagster.url}"):
        dagster_automation.graphql(settings, AUTOMATION_QUERY)


def test_the_component_turns_the_loop_on_only_when_continual(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeDagster()
    monkeypatch.setattr(dagster_automation, "graphql", fake)
    assert DagsterWorkflows(get_settings(home=tmp_path, dagster_continual=False)).after_healthy() == ""
    assert fake.calls == [] and fake.running == set()  # not even read: the stored state stays
    note = DagsterWorkflows(get_settings(home=tmp_path, dagster_continual=True)).after_healthy()
    assert note.startswith("loop on: ") and len(fake.running) == 4


def _dagster_row(healthy: bool = True) -> ComponentState:
    return ComponentState("dagster", "local", "http://127.0.0.1:3000", healthy, "daemon healthy", 42, "d.log")


def test_status_lists_schedules_and_sensors_whole_when_piped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "status", lambda settings, names: [_dagster_row()])
    monkeypatch.setattr(cli, "cluster_apps", lambda: [])
    monkeypatch.setattr(dagster_automation, "graphql", FakeDagster(running={"silver_events_sensor"}))
    result = CliRunner().invoke(cli.app, ["status", "dagster"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "…" not in result.output  # off a terminal the tables keep their natural width
    row = next(line for line in result.output.splitlines() if "silver_events_sensor" in line)
    assert all(word in row for word in ("sensor", "yes", "running", "every 30 s", "2026-05-28 20:26:40 UTC", "skipped"))
    row = next(line for line in result.output.splitlines() if "daily_full_retraining" in line)
    assert "stopped" in row and "yes" not in row
    result = CliRunner().invoke(cli.app, ["status", "dagster", "--json"])
    (printed,) = json.loads(result.output)  # a list of components, as without Dagster
    assert printed["name"] == "dagster" and printed["healthy"]
    silver = next(i for i in printed["automation"] if i["name"] == "silver_events_sensor")
    assert silver["state"] == "running" and silver["last_tick"]["status"] == "skipped"


def test_status_of_a_down_dagster_reads_no_schedules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "status", lambda settings, names: [_dagster_row(healthy=False)])
    monkeypatch.setattr(cli, "cluster_apps", lambda: [])
    monkeypatch.setattr(dagster_automation, "graphql", FakeDagster(refuse=True))  # would fail a read
    result = CliRunner().invoke(cli.app, ["status", "--json"])
    assert result.exit_code == 1 and "automation" not in json.loads(result.output)[0]


def test_up_continual_starts_dagster_with_what_was_named(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Settings, list[str] | None]] = []

    def fake_up(settings: Settings, names: list[str] | None = None) -> list[ComponentState]:
        seen.append((settings, names))
        return [_dagster_row()]

    fake = FakeDagster(running={"silver_events_sensor", "daily_full_retraining"})
    monkeypatch.setattr(cluster, "up", fake_up)
    monkeypatch.setattr(cli, "cluster_apps", lambda: [])
    monkeypatch.setattr(dagster_automation, "graphql", fake)
    env = {"STREAMREC_DAGSTER_ENABLED": "false"}
    assert CliRunner().invoke(cli.app, ["up", "kafka", "--continual"], env=env).exit_code == 0
    settings, names = seen[-1]
    assert names == ["kafka", "dagster"] and settings.dagster.enabled and settings.dagster.continual
    assert CliRunner().invoke(cli.app, ["up", "kafka"], env=env).exit_code == 0
    assert seen[-1][1] == ["kafka"] and not seen[-1][0].dagster.continual
    result = CliRunner().invoke(cli.app, ["up", "--no-continual"], env=env)
    assert result.exit_code == 0, result.output
    assert seen[-1][1] is None and not seen[-1][0].dagster.continual
    assert "dagster: loop off: silver_events_sensor stopped" in result.output
    assert fake.running == {"daily_full_retraining"}  # a schedule outside the loop is left alone


def test_instigator_json_is_plain() -> None:
    instigator = Instigator("s", "schedule", True, False, "0 * * * * (UTC)", "id", "loc", "repo", None)
    assert instigator.as_json() == {
        "name": "s",
        "kind": "schedule",
        "loop": True,
        "state": "stopped",
        "timing": "0 * * * * (UTC)",
        "last_tick": None,
    }

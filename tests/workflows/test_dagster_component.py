"""`streamrec up dagster`: the Dagster component of the mini-cluster (webserver + daemon), the
daemon running a sensor and the run it launches, and `up --continual` turning the loop on."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from click.testing import Result
from dagster import DagsterInstance
from typer.testing import CliRunner
from workflowdata import append_clicks

from infra import cli, cluster, dagster_automation
from infra.components import DagsterWorkflows, all_components, settings_environment
from infra.polling import wait_until
from infra.processes import free_port, group_members, log_tail, port_in_use, read_record
from infra.settings import Settings, get_settings
from workflows.assets.features import TABLES
from workflows.lineage import delta_version

JOBS_QUERY = """{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name }
  jobs { name } schedules { name scheduleState { status } } sensors { name sensorState { status } } } } } }"""


LOOP = {
    "ingest_every_15_minutes", "hourly_warm_start_training", "silver_events_sensor", "registered_model_sensor",
    "follow_sensor",
}  # fmt: skip


def test_dagster_is_a_component_unless_disabled(tmp_path: Path) -> None:
    off = get_settings(home=tmp_path, dagster_enabled=False)
    assert "dagster" not in [component.name for component in all_components(off)]
    on = get_settings(home=tmp_path, dagster_enabled=True)
    assert [component.name for component in all_components(on)][-1] == "dagster"
    assert on.is_local("dagster")
    assert not get_settings(home=tmp_path, dagster_host="dagster.internal").is_local("dagster")
    assert not get_settings(home=tmp_path, external=["dagster"]).is_local("dagster")


def test_the_component_runs_dagster_dev_on_its_own_instance(tmp_path: Path) -> None:
    settings = get_settings(home=tmp_path, dagster_enabled=True, dagster_port=3999, topic="t-env")
    component = DagsterWorkflows(settings)
    command = component.command()
    assert command[1:4] == ["dev", "-m", "workflows.definitions"]
    assert command[-4:] == ["--host", "127.0.0.1", "--port", "3999"]
    assert component.ports() == [("127.0.0.1", 3999)]
    component.prepare()
    instance = yaml.safe_load((settings.dagster_home / "dagster.yaml").read_text())
    assert instance["storage"] == {"sqlite": {"base_dir": str(settings.dagster_home / "storage")}}
    # The installed Dagster loads the file (its schema knows every key) with the newsletter modal off.
    loaded = DagsterInstance.from_config(str(settings.dagster_home))
    assert not loaded.nux_enabled and not loaded.telemetry_enabled
    loaded.dispose()
    environment = component.environment()
    assert environment["DAGSTER_HOME"] == str(settings.dagster_home)
    assert environment["STREAMREC_TOPIC"] == "t-env"


def test_the_follow_job_never_holds_the_slot_the_batch_runs_queue_for(tmp_path: Path) -> None:
    """The instance's run queue has a batch slot and a follow slot (tag limits): with the
    long-running follow job in progress a batch run still starts; batch runs go one at a time."""
    from dagster import DagsterRun
    from dagster._utils.tags import TagConcurrencyLimitsCounter

    from workflows.jobs import ALL_JOBS, follow_job

    settings = get_settings(home=tmp_path, dagster_enabled=True)
    DagsterWorkflows(settings).prepare()
    loaded = DagsterInstance.from_config(str(settings.dagster_home))
    queue = loaded.get_concurrency_config().run_queue_config
    loaded.dispose()
    assert queue is not None and queue.max_concurrent_runs == 2

    def run(slot: dict[str, str]) -> DagsterRun:
        return DagsterRun(job_name="j", tags=slot)

    def blocked(slot: dict[str, str], in_progress: list[dict[str, str]]) -> bool:
        counter = TagConcurrencyLimitsCounter(queue.tag_concurrency_limits, [run(tags) for tags in in_progress])
        return counter.is_blocked(run(slot))

    batch, follow = dagster_automation.BATCH_SLOT, dagster_automation.FOLLOW_SLOT
    assert not blocked(batch, [follow]) and blocked(batch, [batch]) and blocked(follow, [follow])
    assert not blocked(follow, [batch])
    for job in ALL_JOBS:
        assert dict(job.tags or {}).items() >= (follow if job is follow_job else batch).items(), job.name


def test_settings_environment_reproduces_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = get_settings(
        home=tmp_path, external=["kafka", "mlflow"], train_use_gpu=True, topic="x", serve_blend_weights={"click": 0.5}
    )
    for name, value in settings_environment(settings).items():
        monkeypatch.setenv(name, value)
    assert get_settings() == settings


def test_definitions_tag_the_loop() -> None:
    """What `up --continual` turns on is what the definitions tag: the ingest schedule, the hourly
    warm start and the three sensors (the follow job's too), not the daily retraining or ranking."""
    from workflows.definitions import defs

    definitions = [*defs.schedules, *defs.sensors]  # type: ignore[misc]
    tagged = {
        d.name for d in definitions if d.tags.get(dagster_automation.LOOP_TAG) == dagster_automation.LOOP_TAG_VALUE
    }
    assert tagged == LOOP


def _graphql(settings: Settings, query: str) -> dict[str, Any]:
    answer = requests.post(f"{settings.dagster.url}/graphql", json={"query": query}, timeout=30).json()
    assert "errors" not in answer, answer
    return dict(answer["data"])


def _sensor_turns_silver_into_features(settings: Settings, repository: dict[str, Any]) -> None:
    """The daemon ticks the silver sensor, which launches one feature build run (a subprocess
    with the settings of `up`); the next tick, with the cursor the daemon stored, skips."""
    selector = (
        f'{{repositoryLocationName: "{repository["location"]["name"]}", repositoryName: "{repository["name"]}", '
        'sensorName: "silver_events_sensor"}'
    )
    started = _graphql(settings, f"mutation {{ startSensor(sensorSelector: {selector}) {{ __typename }} }}")
    assert started["startSensor"]["__typename"] == "Sensor"
    runs_query = '{ runsOrError(filter: {pipelineName: "features_job"}) { ... on Runs { results { status } } } }'
    ticks_query = f"{{ sensorOrError(sensorSelector: {selector}) {{ ... on Sensor {{ sensorState {{ ticks(limit: 50) {{ status cursor runIds }} }} }} }} }}"  # noqa: E501
    runs: list[dict[str, Any]] = []
    ticks: list[dict[str, Any]] = []

    def settled() -> bool:
        nonlocal runs, ticks
        runs = _graphql(settings, runs_query)["runsOrError"]["results"]
        ticks = _graphql(settings, ticks_query)["sensorOrError"]["sensorState"]["ticks"]
        finished = runs and runs[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED")
        # A tick the daemon is still evaluating shows as STARTED (CI once read the second one then).
        return bool(finished and len(ticks) >= 2 and ticks[0]["status"] != "STARTED")

    with contextlib.suppress(TimeoutError):  # the asserts below say what was seen
        wait_until(settled, 240, interval_s=2, what="the sensor's run and the tick after it")
    assert [run["status"] for run in runs] == ["SUCCESS"], (runs, log_tail(settings.log_dir / "dagster.log", 40))
    # Newest first: the first tick ever launched the run, every later one skipped with its cursor.
    # All of them are read: on a busy machine the run outlasts several ticks (under a load of 15
    # on 2 cores it once saw five skips before it ended, past a window of the newest five).
    first, later = ticks[-1], ticks[:-1]
    assert first["status"] == "SUCCESS" and len(first["runIds"]) == 1, ticks
    assert later and all(tick["status"] == "SKIPPED" for tick in later), ticks
    assert all(tick["cursor"] == first["cursor"] for tick in later) and json.loads(first["cursor"])["version"] == 0
    assert all(delta_version(settings, table) == 0 for table in TABLES.values())  # the run built the features


@pytest.mark.integration  # `streamrec up dagster`: no service fixture
def test_up_starts_dagster_that_answers_and_down_stops_it(tmp_path: Path) -> None:
    settings = get_settings(home=tmp_path, dagster_enabled=True, dagster_port=free_port())
    append_clicks(settings, users=5, per_user=4)
    try:
        (state,) = cluster.up(settings, ["dagster"])
        assert state.healthy and "daemon healthy" in state.detail, state
        (repository,) = _graphql(settings, JOBS_QUERY)["repositoriesOrError"]["nodes"]
        assert {"ingest_job", "features_job", "promotion_job", "warm_start_training_job"} <= {
            job["name"] for job in repository["jobs"]
        }
        assert {s["name"]: s["scheduleState"]["status"] for s in repository["schedules"]} == {
            "hourly_warm_start_training": "STOPPED",
            "daily_full_retraining": "STOPPED",
            "ingest_every_15_minutes": "STOPPED",
            "daily_ranking_training": "STOPPED",
        }
        assert {s["name"] for s in repository["sensors"]} == {
            "silver_events_sensor", "registered_model_sensor", "follow_sensor"
        }  # fmt: skip
        assert (settings.dagster_home / "storage").is_dir()  # SQLite instance storage of its own
        again = cluster.up(settings, ["dagster"])  # idempotent: nothing started twice
        assert again[0].pid == state.pid and "already running" in again[0].detail
        # `status` and `down` see a running Dagster even with the setting off.
        assert "dagster" in [component.name for component in all_components(_disabled(settings))]
        _sensor_turns_silver_into_features(settings, repository)
        _continual_turns_the_loop_on_and_keeps_it(settings)
    finally:
        record = read_record(settings.run_dir / "dagster.pid")
        stopped = cluster.down(_disabled(settings), ["dagster"])
    assert record is not None and stopped == [f"dagster (pid {record.pid})"]
    assert group_members(record.pid) == []  # webserver, daemon and code server stopped with it
    assert not port_in_use("127.0.0.1", settings.dagster.port)


def _loop_states(settings: Settings) -> dict[str, str]:
    return {i.name: i.state for i in dagster_automation.read_instigators(settings) if i.loop}


def _streamrec(settings: Settings, *args: str) -> Result:
    """The CLI's `up` / `status` with these settings, its output not a terminal and of no set width
    (as piped to a log). In-process: no new interpreter per command."""
    env: dict[str, str | None] = {**settings_environment(settings), "COLUMNS": None}
    result = CliRunner().invoke(cli.app, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def _continual_turns_the_loop_on_and_keeps_it(settings: Settings) -> None:
    """`up --continual` on the running Dagster turns on what the sensor test left stopped;
    `status` lists every schedule and sensor with its state and last tick; `down` and a plain
    `up` keep the loop on; `up --no-continual` turns it off in one command."""
    (state,) = cluster.up(settings.updated(dagster_continual=True), ["dagster"])  # already running
    assert (
        "loop on: hourly_warm_start_training, ingest_every_15_minutes, follow_sensor, registered_model_sensor started"
        in state.detail
    ), state.detail  # the silver sensor was on already
    assert _loop_states(settings) == dict.fromkeys(LOOP, "running")
    status = _streamrec(settings, "status", "dagster")
    assert status.exit_code == 0, status.output
    rows = {line.split()[1]: line for line in status.stdout.splitlines() if line.startswith("│ ")}
    assert LOOP | {"daily_full_retraining", "daily_ranking_training", "dagster"} <= set(rows), status.stdout
    assert all("running" in rows[name] and " yes " in rows[name] for name in LOOP), status.stdout
    assert "stopped" in rows["daily_full_retraining"] and "…" not in status.stdout
    silver = rows["silver_events_sensor"]  # ticked in the sensor test: its time and outcome
    assert " UTC " in silver and ("skipped" in silver or "success" in silver), silver
    cluster.down(settings, ["dagster"])
    (state,) = cluster.up(settings, ["dagster"])  # a plain `up`: the choice was stored in the instance
    assert "loop" not in state.detail and _loop_states(settings) == dict.fromkeys(LOOP, "running")
    off = _streamrec(settings, "up", "dagster", "--no-continual")
    assert off.exit_code == 0 and "loop off: " in off.stdout, off.output
    assert _loop_states(settings) == dict.fromkeys(LOOP, "stopped")


def _disabled(settings: Settings) -> Settings:
    return settings.updated(dagster_enabled=False)


def test_infra_never_imports_workflows() -> None:
    source = "\n".join(path.read_text() for path in Path(__file__).parents[2].joinpath("infra").glob("*.py"))
    assert "import workflows" not in source and "from workflows" not in source

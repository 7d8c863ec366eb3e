"""Dagster's schedules and sensors as `streamrec status` shows them and `streamrec up --continual`
turns them on: read and switched through the GraphQL API of the running webserver.

Why the API of the running Dagster and not ``default_status`` driven by a setting:
- it acts on a Dagster that already runs: a ``default_status`` is read by the code server when
  it loads the definitions, with the environment `up` started it with, so `up --continual`
  on a running Dagster would change nothing until a restart;
- the switch is stored in the instance (SQLite under ``$STREAMREC_HOME/dagster/storage``), so
  `down` and a plain `up` keep it, and a stored state always wins over ``default_status``: a
  schedule once stopped in the UI would ignore the setting for ever;
- it is the same call for the local Dagster and a deployment on Kubernetes
  (``dagster.host``), whose code server the settings of this shell do not reach.

Which schedules and sensors make up the loop is said by the definitions, not here: they carry
the tag ``LOOP_TAG`` (infra never imports workflows); the runs that end with the loop (the
follow job's) carry the job tag ``STOPS_WITH_LOOP_TAG``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import requests

from infra.errors import StreamrecError
from infra.settings import Settings

LOOP_TAG = "streamrec/loop"  # a definition tag: its schedules and sensors are what `up --continual` turns on
LOOP_TAG_VALUE = "continual"
# A job tag (Dagster puts it on the job's runs): a run that lasts until it is stopped (the follow
# job), which `up --no-continual` terminates with the loop.
STOPS_WITH_LOOP_TAG = "streamrec/stops_with_loop"
# The run queue's slots (the instance's tag_concurrency_limits): one batch run at a time (ingest,
# feature builds and training share the machine's cores) beside one long-running follow run, so
# the follow job never holds the only slot that every other loop run queues for.
RUN_SLOT_TAG = "streamrec/run_slot"
BATCH_SLOT = {RUN_SLOT_TAG: "batch"}
FOLLOW_SLOT = {RUN_SLOT_TAG: "follow"}

_TICK = "timestamp status skipReason runIds error { message }"
AUTOMATION_QUERY = f"""{{ repositoriesOrError {{ __typename
  ... on PythonError {{ message }}
  ... on RepositoryConnection {{ nodes {{ name location {{ name }}
    schedules {{ name cronSchedule executionTimezone tags {{ key value }}
      scheduleState {{ id status ticks(limit: 1) {{ {_TICK} }} }} }}
    sensors {{ name minIntervalSeconds tags {{ key value }}
      sensorState {{ id status ticks(limit: 1) {{ {_TICK} }} }} }} }} }} }} }}"""
_ERROR = "__typename ... on Error { message }"
START_SCHEDULE = (
    f"mutation($selector: ScheduleSelector!) {{ startSchedule(scheduleSelector: $selector) {{ {_ERROR} }} }}"
)
STOP_SCHEDULE = f"mutation($id: String!) {{ stopRunningSchedule(id: $id) {{ {_ERROR} }} }}"
START_SENSOR = f"mutation($selector: SensorSelector!) {{ startSensor(sensorSelector: $selector) {{ {_ERROR} }} }}"
STOP_SENSOR = f"mutation($id: String!) {{ stopSensor(id: $id) {{ {_ERROR} }} }}"
LOOP_RUNS_QUERY = """query($filter: RunsFilter!) { runsOrError(filter: $filter) { __typename
  ... on Runs { results { runId } }
  ... on PythonError { message }
  ... on Error { message } } }"""
UNFINISHED_RUNS = ["QUEUED", "NOT_STARTED", "STARTING", "STARTED"]  # CANCELING: being terminated already
_SUCCESS = {"startSchedule": "ScheduleStateResult", "stopRunningSchedule": "ScheduleStateResult",
            "startSensor": "Sensor", "stopSensor": "StopSensorMutationResult"}  # fmt: skip


class DagsterApiError(StreamrecError):
    """The Dagster webserver did not answer, or refused a query or a switch."""


@dataclass(frozen=True)
class Tick:
    """The newest evaluation of a schedule or sensor."""

    at: float  # seconds since the epoch
    status: str  # started, skipped, success, failure
    note: str  # the skip reason, the error's first line, or the runs it requested

    @property
    def when(self) -> str:
        """The tick's time in UTC, to the second."""
        return datetime.fromtimestamp(self.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class Instigator:
    """One schedule or sensor of the Dagster definitions and its state in the instance."""

    name: str
    kind: Literal["schedule", "sensor"]
    loop: bool  # tagged LOOP_TAG: `up --continual` turns it on
    running: bool
    timing: str  # the cron schedule, or how often the sensor is evaluated
    state_id: str
    location: str
    repository: str
    last_tick: Tick | None

    @property
    def state(self) -> str:
        return "running" if self.running else "stopped"

    def as_json(self) -> dict[str, Any]:
        """What `streamrec status --json` prints for it."""
        tick = self.last_tick
        return {
            "name": self.name,
            "kind": self.kind,
            "loop": self.loop,
            "state": self.state,
            "timing": self.timing,
            "last_tick": None if tick is None else {"at": tick.when, "status": tick.status, "note": tick.note},
        }


def read_instigators(settings: Settings) -> list[Instigator]:
    """Every schedule and sensor of the running Dagster, with its state and last tick."""
    return parse_instigators(graphql(settings, AUTOMATION_QUERY))


def set_loop(settings: Settings, on: bool) -> list[Instigator]:
    """Turn the loop's schedules and sensors on (or off) in the running Dagster; returns those
    it switched (none when all were already so). Off also terminates the unfinished runs tagged
    ``STOPS_WITH_LOOP_TAG`` (the follow job), which would otherwise run on without the loop.
    Raises when the definitions tag none."""
    loop = [instigator for instigator in read_instigators(settings) if instigator.loop]
    if not loop:
        raise DagsterApiError(f"the Dagster definitions at {settings.dagster.url} tag no schedule or sensor {LOOP_TAG}")
    switched = to_switch(loop, on)
    for instigator in switched:
        _switch(settings, instigator, on)
    if not on:  # after the sensors: none starts a new one meanwhile
        stop_loop_runs(settings)
    return switched


def stop_loop_runs(settings: Settings) -> list[str]:
    """Terminate every unfinished run tagged ``STOPS_WITH_LOOP_TAG``; their ids."""
    from infra.dagster_runs import terminate_run  # it imports this module

    filter_ = {"tags": [{"key": STOPS_WITH_LOOP_TAG, "value": "true"}], "statuses": UNFINISHED_RUNS}
    found = graphql(settings, LOOP_RUNS_QUERY, {"filter": filter_})["runsOrError"]
    if found.get("__typename") != "Runs":
        raise DagsterApiError(f"Dagster could not list its runs: {found.get('message', '?')}")
    ids = [str(run["runId"]) for run in found["results"]]
    for run_id in ids:
        terminate_run(settings, run_id)
    return ids


def to_switch(instigators: list[Instigator], on: bool) -> list[Instigator]:
    """The loop's instigators whose state differs from ``on``."""
    return [instigator for instigator in instigators if instigator.loop and instigator.running != on]


def loop_note(switched: list[Instigator], on: bool) -> str:
    """One line on the loop after `set_loop`: what it switched, or that nothing needed to be."""
    word = "on" if on else "off"
    if not switched:
        return f"loop already {word}"
    return f"loop {word}: {', '.join(instigator.name for instigator in switched)} " + ("started" if on else "stopped")


def _switch(settings: Settings, instigator: Instigator, on: bool) -> None:
    schedule = instigator.kind == "schedule"
    variables: dict[str, Any]
    if on:  # Dagster starts one by its selector (location, repository, name) ...
        field, query = ("startSchedule", START_SCHEDULE) if schedule else ("startSensor", START_SENSOR)
        selector = {"repositoryLocationName": instigator.location, "repositoryName": instigator.repository}
        variables = {"selector": {**selector, ("scheduleName" if schedule else "sensorName"): instigator.name}}
    else:  # ... and stops one by the id of its stored state
        field, query = ("stopRunningSchedule", STOP_SCHEDULE) if schedule else ("stopSensor", STOP_SENSOR)
        variables = {"id": instigator.state_id}
    answer = graphql(settings, query, variables)[field]
    if answer.get("__typename") != _SUCCESS[field]:
        message = (answer.get("message") or answer.get("__typename") or "?").strip().splitlines()[:1]
        raise DagsterApiError(f"Dagster refused to {'start' if on else 'stop'} {instigator.name}: {' '.join(message)}")


def graphql(settings: Settings, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``data`` of one GraphQL request to the Dagster webserver; raises DagsterApiError."""
    url = f"{settings.dagster.url}/graphql"
    try:
        response = requests.post(url, json={"query": query, "variables": variables or {}}, timeout=30)
        answer = response.json()
    except (requests.RequestException, ValueError) as error:
        raise DagsterApiError(f"no answer from the Dagster webserver at {url}: {error.__class__.__name__}") from error
    if answer.get("errors") or not isinstance(answer.get("data"), dict):
        first = (answer.get("errors") or [{}])[0].get("message", f"HTTP {response.status_code}")
        raise DagsterApiError(f"the Dagster webserver at {url} refused a query: {first}")
    return dict(answer["data"])


def parse_instigators(data: dict[str, Any]) -> list[Instigator]:
    """The schedules and sensors in the answer to ``AUTOMATION_QUERY``, schedules first, by name."""
    repositories = data["repositoriesOrError"]
    if repositories.get("__typename") != "RepositoryConnection":
        raise DagsterApiError(f"Dagster could not list its repositories: {repositories.get('message', '?')}")
    found = []
    for repository in repositories["nodes"]:
        where = {"location": repository["location"]["name"], "repository": repository["name"]}
        for schedule in repository["schedules"]:
            timing = f"{schedule['cronSchedule']} ({schedule.get('executionTimezone') or 'UTC'})"
            found.append(_instigator(schedule, "schedule", schedule["scheduleState"], timing, where))
        for sensor in repository["sensors"]:
            timing = f"every {sensor['minIntervalSeconds']} s"
            found.append(_instigator(sensor, "sensor", sensor["sensorState"], timing, where))
    return sorted(found, key=lambda instigator: (instigator.kind, instigator.name))


def _instigator(
    definition: dict[str, Any], kind: Literal["schedule", "sensor"], state: dict[str, Any], timing: str, where: dict
) -> Instigator:
    tags = {tag["key"]: tag["value"] for tag in definition.get("tags") or []}
    ticks = state.get("ticks") or []
    return Instigator(
        name=definition["name"],
        kind=kind,
        loop=tags.get(LOOP_TAG) == LOOP_TAG_VALUE,
        running=state["status"] == "RUNNING",
        timing=timing,
        state_id=state["id"],
        location=where["location"],
        repository=where["repository"],
        last_tick=_tick(ticks[0]) if ticks else None,
    )


def _tick(tick: dict[str, Any]) -> Tick:
    status = str(tick["status"]).lower()
    if tick.get("error"):
        note = (tick["error"].get("message") or "").strip().splitlines()[:1]
        text = " ".join(note)
    elif tick.get("skipReason"):
        text = tick["skipReason"]
    elif tick.get("runIds"):
        text = f"{len(tick['runIds'])} run(s) requested"
    else:
        text = ""
    return Tick(at=float(tick["timestamp"]), status=status, note=text)

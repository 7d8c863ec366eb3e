"""The follow job under Dagster (workflows.follow, follow_job, follow_sensor), unit tier: the
definitions, the sensor's one-run-at-a-time rule on an ephemeral instance, the supervision of a
child process (a stand-in for `streamrec train --follow` that prints delta lines and publishes
on SIGTERM), and the op in an in-process run interrupted as a terminated run is. The job on a
running Dagster with the real command: test_follow_job_dagster.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType

from infra.dagster_automation import LOOP_TAG, LOOP_TAG_VALUE, STOPS_WITH_LOOP_TAG
from infra.settings import Settings, get_settings
from workflows.follow import ChildProcess, DeltaLine, supervise
from workflows.jobs import follow_job
from workflows.resources import StreamrecResource
from workflows.sensors import FOLLOW_RETRY_AFTER_S, follow_sensor

# What `streamrec train --follow` prints per delta (docs/training.md, "The follow loop").
DOCUMENTED = (
    "delta streamrec-retrieval v7 #12: 48,210 events learned, 1,904 steps, 2,731 rows, 3 new items, encoder yes, "
    "silver v311 (lag 0 versions, oldest event waited 31.2 s)"
)

# A stand-in for the follow job: a delta line at once and every 0.2 s, a last one and the stop
# line on SIGTERM (exit 0); ``exit`` as first argument: exit 3 after one line; ``stubborn``:
# ignore SIGTERM.
FAKE_FOLLOW = """
import signal, sys, time
stop = []
mode = sys.argv[1] if len(sys.argv) > 1 else ""
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else lambda *_: stop.append(1))
print("args:", " ".join(sys.argv[1:]), flush=True)
if mode == "exit":
    print("the follow job stopped: SequenceConflict", flush=True)
    sys.exit(3)
sequence = 0
def delta():
    global sequence
    sequence += 1
    print(f"delta m v7 #{sequence}: {1000 * sequence:,} events learned, {sequence} steps, 5 rows, 1 new items, "
          f"encoder no, silver v{40 + sequence} (lag 0 versions)", flush=True)
delta()
while not stop:
    time.sleep(0.2)
    delta()
delta()
print("stopped: done", flush=True)
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return get_settings(home=tmp_path)


@pytest.fixture
def fake_follow(tmp_path: Path) -> Path:
    script = tmp_path / "fake_follow.py"
    script.write_text(FAKE_FOLLOW)
    return script


def test_the_definitions_hold_the_job_its_sensor_and_the_deltas_asset() -> None:
    from workflows.definitions import defs

    job = defs.resolve_job_def("follow_job")
    assert list(job.graph.node_dict) == ["follow_loop"] and job.tags[STOPS_WITH_LOOP_TAG] == "true"
    sensor = defs.resolve_sensor_def("follow_sensor")
    assert sensor.job_name == "follow_job" and sensor.tags.get(LOOP_TAG) == LOOP_TAG_VALUE  # on with the loop
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    graph = defs.resolve_asset_graph()
    deltas = graph.get(dg.AssetKey("model_deltas"))
    assert {key.to_user_string() for key in deltas.parent_keys} == {"retrieval_model", "silver_events"}


def test_a_delta_line_is_read_and_other_lines_are_not() -> None:
    delta = DeltaLine.parse(DOCUMENTED)
    assert delta == DeltaLine("streamrec-retrieval", 7, 12, 48_210, 1_904, 2_731, 3, True, 311, 0)
    assert delta.metadata()["events_learned"] == 48_210 and delta.metadata()["silver_version"] == 311
    for line in ("vocabulary: 3 new items, indices 31..33", "stopped: 10 events learned", ""):
        assert DeltaLine.parse(line) is None


def _tick(settings: Settings, instance: dg.DagsterInstance) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance, resources={"streamrec": StreamrecResource.from_settings(settings)}
    )
    result = follow_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def _run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus) -> str:
    run = instance.add_run(dg.DagsterRun(job_name=follow_job.name, run_id=str(uuid.uuid4()), status=status))
    return run.run_id


def _end(instance: dg.DagsterInstance, run_id: str, event: DagsterEventType) -> None:
    instance.report_dagster_event(DagsterEvent(event.value, job_name=follow_job.name), run_id)


def test_the_sensor_requests_a_run_only_when_none_is_unfinished(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import serving.registry

    production: list[str | None] = [None]
    monkeypatch.setattr(serving.registry, "served_version", lambda settings: production[0])
    instance = dg.DagsterInstance.ephemeral()
    assert "no 'production' version to follow" in str(_tick(settings, instance).skip_reason)

    production[0] = "7"
    first = _tick(settings, instance).run_requests or []
    model = settings.mlflow.registered_model
    assert [(r.run_key, r.tags["streamrec/base_version"]) for r in first] == [(f"follow-{model}-v7-after-none", "7")]
    assert [r.run_key for r in _tick(settings, instance).run_requests or []] == [first[0].run_key]  # same key: once

    for status in (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING):
        running = _run(instance, status)
        skipped = _tick(settings, instance)
        assert not skipped.run_requests and f"run {running} is {status.value.lower()}" in str(skipped.skip_reason)
        _end(instance, running, DagsterEventType.RUN_SUCCESS)  # ended (production moved, or terminated)
    production[0] = "8"
    again = _tick(settings, instance).run_requests or []
    assert [r.run_key for r in again] == [f"follow-{model}-v8-after-{running}"]  # a new key after each run

    failed = _run(instance, dg.DagsterRunStatus.STARTED)
    _end(instance, failed, DagsterEventType.RUN_FAILURE)
    assert f"failed; next try {FOLLOW_RETRY_AFTER_S} s" in str(_tick(settings, instance).skip_reason)
    later = time.time() + FOLLOW_RETRY_AFTER_S + 1
    monkeypatch.setattr("workflows.sensors.time.time", lambda: later)
    assert [r.run_key for r in _tick(settings, instance).run_requests or []] == [f"follow-{model}-v8-after-{failed}"]


def _child(script: Path, *args: str) -> ChildProcess:
    return ChildProcess([sys.executable, str(script), *args], dict(os.environ))


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in this process, as in a Dagster run's op (Dagster installs
    its handler). Not so by default: a process started in the background of a non-interactive
    shell (CI) inherits SIGINT ignored, and an ignored interrupt never reaches ``supervise``."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_an_interrupt_stops_the_child_with_sigterm_and_its_last_lines_are_read(
    fake_follow: Path, sigint_raises: None
) -> None:
    child = _child(fake_follow)
    lines: list[str] = []
    give_up = time.monotonic() + 60  # a lost interrupt fails the test instead of hanging it

    def interrupt_after_two_deltas(delta: DeltaLine) -> None:
        if delta.sequence == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as Dagster interrupts a terminated run's op

    outcome = supervise(
        child, lines.append, interrupt_after_two_deltas,
        lambda: "no interrupt came" if time.monotonic() > give_up else "", check_every_s=1, stop_timeout_s=30,
    )  # fmt: skip
    assert outcome.returncode == 0 and not outcome.killed
    assert outcome.stopped_because == "the Dagster run was terminated"
    assert lines[-1] == "stopped: done" and lines[0].startswith("args:")
    assert [delta.sequence for delta in outcome.deltas] == list(range(1, len(outcome.deltas) + 1))
    assert len(outcome.deltas) >= 3  # the one it published on SIGTERM too


def test_a_stop_reason_stops_it_an_error_exit_is_reported_and_a_stubborn_child_is_killed(fake_follow: Path) -> None:
    checks: list[int] = []

    def moved() -> str:
        checks.append(1)
        return "'production' moved from version 7 to 8" if len(checks) == 2 else ""

    outcome = supervise(_child(fake_follow), lambda line: None, lambda d: None, moved, check_every_s=0.1,
                        stop_timeout_s=30)  # fmt: skip
    assert (outcome.returncode, outcome.stopped_because) == (0, "'production' moved from version 7 to 8")

    child = _child(fake_follow, "exit")
    failed = supervise(child, lambda line: None, lambda d: None, lambda: "", check_every_s=60, stop_timeout_s=30)
    assert (failed.returncode, failed.stopped_because) == (3, "")
    assert list(child.tail)[-1] == "the follow job stopped: SequenceConflict"

    stubborn = supervise(_child(fake_follow, "stubborn"), lambda line: None, lambda d: None, lambda: "stop",
                         check_every_s=0.1, stop_timeout_s=0.5)  # fmt: skip
    assert stubborn.killed and stubborn.returncode == -signal.SIGKILL


def test_an_error_while_supervising_stops_the_child_then_propagates(fake_follow: Path) -> None:
    child = _child(fake_follow)

    def broken(delta: DeltaLine) -> None:
        raise RuntimeError("the event log is gone")

    with pytest.raises(RuntimeError, match="event log is gone"):
        supervise(child, lambda line: None, broken, lambda: "", check_every_s=60, stop_timeout_s=30)
    assert child.process.poll() == 0  # SIGTERM: it published and exited


def test_a_terminated_run_stops_the_child_and_ends_in_success_with_its_deltas_observed(
    tmp_path: Path, fake_follow: Path
) -> None:
    """The op with the command of ``dagster.job_command`` (the stand-in); the run is interrupted
    once the child published a delta, as Dagster interrupts the op of a terminated run."""
    settings = get_settings(home=tmp_path, dagster_job_command=f"{sys.executable} {fake_follow}")
    instance = dg.DagsterInstance.ephemeral()

    def interrupt_once_observed() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            records = instance.fetch_observations(dg.AssetKey("model_deltas"), limit=1).records
            if records:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.2)

    threading.Thread(target=interrupt_once_observed, daemon=True).start()
    result = follow_job.execute_in_process(
        run_config=dg.RunConfig(ops={"follow_loop": {"config": {"base_version": 7, "publish_every_s": 5,
                                                                "train": {"lr": 0.001}}}}),
        resources={"streamrec": StreamrecResource.from_settings(settings)},
        instance=instance,
    )  # fmt: skip
    assert result.success
    observations = [
        event.asset_observation_data.asset_observation
        for event in result.events_for_node("follow_loop")
        if event.event_type == DagsterEventType.ASSET_OBSERVATION
    ]
    sequences = [observation.metadata["delta_sequence"].value for observation in observations]
    assert sequences == list(range(1, len(sequences) + 1)) and len(sequences) >= 2
    output = next(event for event in result.events_for_node("follow_loop") if event.is_successful_output)
    metadata = {key: value.value for key, value in output.step_output_data.metadata.items()}
    assert metadata["stopped_because"] == "the Dagster run was terminated" and metadata["exit_code"] == 0
    assert metadata["deltas_published"] == len(sequences) and metadata["base_version"] == 7
    logged = [event.message or "" for event in instance.all_logs(result.run_id)]
    started = next(message for message in logged if "follow job started" in message)
    assert "train --follow --base-version 7 --publish-every 5 --config " in started
    assert any("args: train --follow --base-version 7" in message for message in logged)  # the child's own line


SUPERVISOR = """
import os, sys, time
from workflows.follow import ChildProcess
child = ChildProcess([sys.executable, "-c", sys.argv[1], sys.argv[2]], dict(os.environ))
print(child.pid, flush=True)
time.sleep(600)
"""
# A follow loop between two deltas: silent (no write to the dead pipe ends it), stops on SIGTERM only.
QUIET_CHILD = """
import pathlib, signal, sys, time
stopped = []
signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
pathlib.Path(sys.argv[1]).write_text("ready")
while not stopped:
    time.sleep(0.1)
pathlib.Path(sys.argv[1]).write_text("published on SIGTERM")
"""


def test_a_killed_supervisor_leaves_no_follow_loop_running(tmp_path: Path) -> None:
    """The run's process dying outright (SIGKILL) SIGTERMs the child, which publishes and exits."""
    script, marker = tmp_path / "supervisor.py", tmp_path / "child-stopped"
    script.write_text(SUPERVISOR)
    command = [sys.executable, str(script), QUIET_CHILD, str(marker)]
    supervisor = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert supervisor.stdout is not None
    child_pid = int(supervisor.stdout.readline())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not marker.exists():  # its SIGTERM handler is in place
        time.sleep(0.1)
    supervisor.kill()
    supervisor.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(child_pid):
        time.sleep(0.1)
    alive = _alive(child_pid)
    if alive:
        os.kill(child_pid, signal.SIGKILL)
    assert not alive and marker.read_text() == "published on SIGTERM"


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, reaped by init later, counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False

"""The follow job under Dagster: `streamrec train --follow` as the child process of a run's op.

``follow_loop`` (the op of ``follow_job``) starts the same command line the Ray jobs run
(``workflows.ray_jobs.cli_command``: `streamrec train --follow --base-version N`, every setting
passed as ``STREAMREC_*``), on the machine of the run: the follow loop is one process without Ray
Train (docs/training.md, "The follow loop"), as a training asset's driver runs in the run's
process. The op streams the child's lines into the run's log, turns each delta line into an
``AssetObservation`` of ``model_deltas`` (base, sequence, events learned, rows, new items, silver
version and lag) and stops the child with SIGTERM, which makes it publish what it learned since
its last delta and exit 0, when:

* the Dagster run is terminated (the UI's Terminate, ``infra.dagster_runs.terminate_run``):
  Dagster interrupts the op, which stops the child, waits for it and returns, so the run ends
  SUCCESS with the last delta published;
* the serving alias moves to another version (a promotion or a rollback): deltas apply to one
  base, and serving does not apply deltas of a version it does not serve. The run ends; the
  ``follow_sensor`` starts the next one on the new base.

A child that exits on its own with an error (no production version, ``SequenceConflict``
because another follow job publishes on the same base, ...) fails the run with its last lines.
"""

# No `from __future__ import annotations`: Dagster reads the context and resource annotations at definition.
import ctypes
import os
import queue
import re
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from dagster import OpExecutionContext
from pydantic import Field

from infra.components import settings_environment
from infra.settings import Settings
from workflows.resources import StreamrecResource

MODEL_DELTAS = dg.AssetKey("model_deltas")
# The Dagster run's interrupt (a terminated run), as Dagster raises it in an op, and plain Ctrl-C.
INTERRUPTS: tuple[type[BaseException], ...] = (dg.DagsterExecutionInterruptedError, KeyboardInterrupt)
TAIL_LINES = 40

model_deltas = dg.AssetSpec(
    MODEL_DELTAS,
    deps=["retrieval_model", "silver_events"],
    description="model_deltas: the rows the follow job changed since its last delta, on the registered base "
    "version serving runs (`streamrec train --follow`; observed by follow_job at each delta it publishes).",
    group_name="training",
    kinds={"delta", "pytorch"},
)

# The follow loop's line per delta (training.streaming.follow.FollowJob.publish).
DELTA_LINE = re.compile(
    r"^delta (?P<model>.+) v(?P<base>\d+) #(?P<sequence>\d+): (?P<events>[\d,]+) events learned, "
    r"(?P<steps>[\d,]+) steps, (?P<rows>[\d,]+) rows, (?P<new_items>[\d,]+) new items, encoder (?P<encoder>yes|no), "
    r"silver v(?P<silver>\d+) \(lag (?P<lag>\d+) versions"
)


@dataclass(frozen=True)
class DeltaLine:
    """What the follow job said about a delta it published (counts since it started)."""

    model: str
    base_version: int
    sequence: int
    events_learned: int
    steps: int
    rows: int
    new_items: int
    encoder_changed: bool
    silver_version: int
    silver_lag_versions: int

    @classmethod
    def parse(cls, line: str) -> "DeltaLine | None":
        """The delta a line announces; None for every other line."""
        found = DELTA_LINE.match(line.strip())
        if found is None:
            return None
        number = lambda name: int(found[name].replace(",", ""))  # noqa: E731
        return cls(
            found["model"], number("base"), number("sequence"), number("events"), number("steps"), number("rows"),
            number("new_items"), found["encoder"] == "yes", number("silver"), number("lag"),
        )  # fmt: skip

    def metadata(self) -> dict[str, Any]:
        """The observation's metadata."""
        return {
            "base_version": self.base_version,
            "delta_sequence": self.sequence,
            "events_learned": self.events_learned,
            "steps": self.steps,
            "rows": self.rows,
            "new_items": self.new_items,
            "encoder_changed": self.encoder_changed,
            "silver_version": self.silver_version,
            "silver_lag_versions": self.silver_lag_versions,
        }


PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal a process gets when its parent exits


def _terminate_with_parent() -> None:
    """In the forked child, before exec: ask Linux for SIGTERM when the parent process dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildProcess:
    """A command whose output lines (stdout and stderr) a reader thread puts in a queue, so the
    caller waits for them in short steps and stays interruptible."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        # The child stays in the run's process group: `streamrec down` stopping Dagster's group
        # SIGTERMs it too, and it publishes before it exits. If the run's process dies outright
        # (SIGKILL, out of memory), the kernel SIGTERMs the child (parent-death signal), so no
        # follow loop is left running unmanaged beside the next run's.
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            preexec_fn=_terminate_with_parent,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        threading.Thread(target=self._read, name=f"child-{self.process.pid}-output", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # the output ended: the child exited (or closed it)

    def close(self, timeout_s: float) -> None:
        """SIGTERM if it still runs, SIGKILL after ``timeout_s``."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def next_line(self, timeout_s: float) -> tuple[str | None, bool]:
        """(the next line or None after ``timeout_s``, whether the output ended)."""
        try:
            line = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            return None, False
        if line is None:
            return None, True
        self.tail.append(line)
        return line, False


@dataclass
class Supervision:
    """How a supervised child ended: why it was stopped ('' = it exited on its own), its exit
    status, the deltas it announced."""

    stopped_because: str = ""
    returncode: int | None = None
    deltas: list[DeltaLine] = field(default_factory=list)
    killed: bool = False


def supervise(
    child: ChildProcess,
    on_line: Callable[[str], None],
    on_delta: Callable[[DeltaLine], None],
    should_stop: Callable[[], str],
    *,
    check_every_s: float,
    stop_timeout_s: float,
    interrupts: tuple[type[BaseException], ...] = INTERRUPTS,
) -> Supervision:
    """Pass the child's lines on until it exits; ``should_stop()`` (every ``check_every_s``)
    returning a reason, or an interrupt, sends it SIGTERM, then its remaining lines are passed
    on until it exits (SIGKILL after ``stop_timeout_s``). Interrupts while it stops are ignored:
    the stop is already under way. Any other error stops the child as well, then propagates."""
    try:
        return _supervise(child, on_line, on_delta, should_stop, check_every_s, stop_timeout_s, interrupts)
    except BaseException:
        child.close(stop_timeout_s)  # no child outlives its supervision
        raise


def _supervise(
    child: ChildProcess,
    on_line: Callable[[str], None],
    on_delta: Callable[[DeltaLine], None],
    should_stop: Callable[[], str],
    check_every_s: float,
    stop_timeout_s: float,
    interrupts: tuple[type[BaseException], ...],
) -> Supervision:
    outcome = Supervision()
    next_check = time.monotonic() + check_every_s
    stop_deadline: float | None = None
    ended = False
    while not ended:
        try:
            line, ended = child.next_line(timeout_s=0.5)
            if line is not None:
                on_line(line)
                delta = DeltaLine.parse(line)
                if delta is not None:
                    outcome.deltas.append(delta)
                    on_delta(delta)
            if stop_deadline is None and time.monotonic() >= next_check:
                next_check = time.monotonic() + check_every_s
                reason = should_stop()
                if reason:
                    outcome.stopped_because = reason
                    stop_deadline = _terminate(child, stop_timeout_s)
            if stop_deadline is not None and not ended and time.monotonic() > stop_deadline:
                child.process.kill()
                outcome.killed = True
                stop_deadline = float("inf")
        except interrupts:
            if stop_deadline is None:
                outcome.stopped_because = "the Dagster run was terminated"
                stop_deadline = _terminate(child, stop_timeout_s)
    outcome.returncode = child.process.wait()
    return outcome


def _terminate(child: ChildProcess, timeout_s: float) -> float:
    if child.process.poll() is None:
        child.process.send_signal(signal.SIGTERM)
    return time.monotonic() + timeout_s


class FollowConfig(dg.Config):
    """A follow_job run: which base, how often it publishes, the training options."""

    base_version: int = Field(
        default=0,
        ge=0,
        description="Registered version to follow; 0: the one the serving alias names, and the run ends (after a "
        "last delta) when the alias moves to another version (follow_sensor then starts the next run).",
    )
    publish_every_s: float = Field(default=30.0, gt=0, description="Seconds between published model deltas.")
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="TrainConfig fields (no encoder: it trains the base's), as a `streamrec train --config` "
        "file, e.g. {lr: 0.0005}.",
    )
    alias_check_s: float = Field(default=30.0, gt=0, description="How often the serving alias is read.")
    stop_timeout_s: float = Field(
        default=120.0, gt=0, description="How long a stopped child may take to publish and exit before SIGKILL."
    )


@dg.op(
    description="`streamrec train --follow` until the run is terminated or production moves: its log in the "
    "run's, an observation of model_deltas per delta it publishes.",
    tags={"kind": "pytorch"},
)
def follow_loop(context: OpExecutionContext, config: FollowConfig, streamrec: StreamrecResource) -> dg.Output[None]:
    settings = streamrec.settings()
    base = config.base_version or _production_version(settings)
    if base is None:
        raise dg.Failure(description=f"{settings.mlflow.registered_model} has no {settings.serve.model_alias!r} "
                         "version to follow: promote one, or give base_version")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="streamrec-follow-") as directory:
        args = ["train", "--follow", "--base-version", str(base), "--publish-every", f"{config.publish_every_s:g}"]
        if config.train:
            path = Path(directory) / "train.yaml"
            path.write_text(yaml.safe_dump(config.train))
            args += ["--config", str(path)]
        from workflows.ray_jobs import cli_command

        command = [*shlex.split(cli_command(settings)), *args]
        # Unbuffered: each line reaches the run's log when the child prints it; no progress bar
        # (MLflow's download of the base) in a log of lines.
        env = {**os.environ, **settings_environment(settings), "PYTHONUNBUFFERED": "1",
               "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # fmt: skip
        child = ChildProcess(command, env)
        context.log.info(f"follow job started (pid {child.pid}): {shlex.join(command)}")
        moved = _alias_watch(settings, base, context.log) if not config.base_version else (lambda: "")
        outcome = supervise(
            child, context.log.info,
            lambda delta: context.log_event(dg.AssetObservation(asset_key=MODEL_DELTAS, metadata=delta.metadata())),
            moved, check_every_s=config.alias_check_s, stop_timeout_s=config.stop_timeout_s,
        )  # fmt: skip
    deltas = outcome.deltas
    last = deltas[-1] if deltas else None
    metadata = {
        "base_version": base,
        "deltas_published": len(deltas),
        "last_delta_sequence": last.sequence if last else None,
        "events_learned": last.events_learned if last else 0,
        "silver_version": last.silver_version if last else None,
        "stopped_because": outcome.stopped_because or "the follow job exited",
        "exit_code": outcome.returncode,
        "pid": child.pid,
    }
    if outcome.returncode != 0 or outcome.killed:
        what = f"killed after {config.stop_timeout_s:g} s" if outcome.killed else f"exited {outcome.returncode}"
        tail = "\n".join(child.tail)
        raise dg.Failure(
            description=f"`streamrec train --follow` {what}: {child.tail[-1] if child.tail else 'no output'}",
            metadata={**metadata, "log_tail": dg.MetadataValue.md(f"```\n{tail}\n```")},
        )
    context.log.info(f"follow job stopped ({metadata['stopped_because']}): {len(deltas)} deltas published")
    return dg.Output(None, metadata=metadata)


def _production_version(settings: Settings) -> int | None:
    from serving.registry import served_version

    found = served_version(settings)
    return None if found is None else int(found)


def _alias_watch(settings: Settings, base: int, log: Any) -> Callable[[], str]:
    """A ``should_stop`` that names the serving alias's move away from ``base`` ('' while it stays)."""

    def moved() -> str:
        try:
            now = _production_version(settings)
        except Exception as error:  # noqa: BLE001 - keep following: the next check asks again
            log.warning(f"could not read the serving alias: {error}")
            return ""
        if now == base:
            return ""
        alias = settings.serve.model_alias
        return f"{alias!r} moved from version {base} to {now}" if now else f"{alias!r} no longer names a version"

    return moved

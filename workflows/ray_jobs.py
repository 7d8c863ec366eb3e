"""Heavy steps as Ray jobs: a `streamrec` CLI command run by the Ray cluster of the settings.

``run_ray_job`` submits the command through Ray's job REST API (``JobSubmissionClient`` at
``settings.ray.dashboard_url``, authenticated with the cluster's token from
``infra.ray_access``), passes every setting on as ``STREAMREC_*`` environment variables (the
job reads exactly the settings of the workflow), follows its log while it runs and waits
for it to end. A job that fails, is stopped or runs past its time raises ``RayJobError``
with the tail of its log; a job interrupted here (a cancelled Dagster run) is stopped.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from infra import ray_access
from infra.components import settings_environment
from infra.errors import StreamrecError
from infra.settings import Settings

Log = Callable[[str], None]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class RayJobError(StreamrecError):
    """A Ray job did not succeed; ``tail`` holds the last lines of its log."""

    def __init__(self, message: str, job_id: str, status: str, tail: str) -> None:
        super().__init__(f"{message}\n--- last lines of Ray job {job_id} ---\n{tail}")
        self.job_id = job_id
        self.status = status
        self.tail = tail


@dataclass(frozen=True)
class RayJobResult:
    """A finished Ray job: its id, final status and whole log."""

    job_id: str
    status: str
    logs: str
    seconds: float

    def last_json(self, key: str) -> dict[str, Any] | None:
        """The last log line that is a JSON object holding ``key`` (the CLI's summary line)."""
        for line in reversed(self.logs.splitlines()):
            line = line.strip()
            if line.startswith("{") and f'"{key}"' in line:
                try:
                    return dict(json.loads(line))
                except ValueError:
                    continue
        return None


def cli_command(settings: Settings) -> str:
    """The command-line prefix that runs the streamrec CLI in a job (``dagster_job_command``)."""
    return settings.dagster.job_command or f"{shlex.quote(sys.executable)} -m infra.cli"


def tail(logs: str, lines: int) -> str:
    """The last ``lines`` lines of ``logs``."""
    return "\n".join(logs.rstrip().splitlines()[-lines:])


def run_ray_job(
    settings: Settings,
    args: list[str],
    *,
    step: str,
    log: Log = print,
    poll_s: float = 2.0,
    timeout_s: float = 3600.0,
    tail_lines: int = 40,
) -> RayJobResult:
    """Run ``streamrec <args>`` as a Ray job on the cluster of ``settings`` and wait for it."""
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(settings.ray.dashboard_url, headers=ray_access.auth_headers(settings))
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise StreamrecError(f"cannot reach Ray's job API at {settings.ray.dashboard_url}: {error}") from error
    entrypoint = " ".join([cli_command(settings), *(shlex.quote(arg) for arg in args)])
    job_id = client.submit_job(
        entrypoint=entrypoint,
        submission_id=f"streamrec-{step}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
        runtime_env={"env_vars": settings_environment(settings)},
        metadata={"streamrec_step": step},
    )
    log(f"submitted Ray job {job_id} to {settings.ray.dashboard_url}: {entrypoint}")
    started = time.monotonic()
    shown = 0
    try:
        while True:
            status = str(client.get_job_status(job_id).value)
            logs = client.get_job_logs(job_id)
            for line in logs[shown:].splitlines():
                log(f"[{job_id}] {line}")
            shown = len(logs)
            if status in TERMINAL:
                break
            if time.monotonic() - started > timeout_s:
                client.stop_job(job_id)
                raise RayJobError(f"Ray job {job_id} ran longer than {timeout_s:.0f} s; stopped", job_id, status,
                                  tail(logs, tail_lines))  # fmt: skip
            time.sleep(poll_s)
    except BaseException as error:
        if not isinstance(error, RayJobError):  # interrupted here: the job must not go on without us
            _stop_quietly(client, job_id)
        raise
    seconds = time.monotonic() - started
    if status != "SUCCEEDED":
        first_line = (client.get_job_info(job_id).message or "").strip().splitlines()[:1]  # Ray appends the log
        message = f"Ray job {job_id} ({step}) {status.lower()}: {' '.join(first_line)}".rstrip(": ")
        raise RayJobError(message, job_id, status, tail(logs, tail_lines))
    log(f"Ray job {job_id} succeeded in {seconds:.1f} s")
    return RayJobResult(job_id, status, logs, seconds)


def _stop_quietly(client: Any, job_id: str) -> None:
    try:
        client.stop_job(job_id)
    except Exception:  # noqa: BLE001 - best effort while another error propagates
        pass

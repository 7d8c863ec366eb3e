"""Detached background processes recorded in pid files, and port checks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from infra.polling import wait_until

START_TOLERANCE_S = 0.05  # the start is read in clock ticks (1/100 s): the same process reads the same


def process_start_s(pid: int) -> float:
    """When process ``pid`` started, in seconds since boot; raises psutil.NoSuchProcess.

    Read from /proc/PID/stat on Linux: the kernel's tick count, which no change of the wall
    clock moves. psutil's create_time() adds the boot time derived from the wall clock, so a
    stepped clock (NTP, a virtual machine resumed from a snapshot) shifts it by the step and a
    live process would look like another one that reused its pid. Elsewhere: create_time().
    """
    if not psutil.LINUX:
        return float(psutil.Process(pid).create_time())
    try:
        # After the name, which is in parentheses and may hold spaces.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError) as error:
        raise psutil.NoSuchProcess(pid) from error
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat; fields[0] is field 3


@dataclass(frozen=True)
class ProcessRecord:
    """What `streamrec up` remembers of a process it started."""

    pid: int
    command: list[str]
    log_file: str
    started_at: float
    start_s: float  # process_start_s(pid): tells a later process that reuses the pid apart

    def alive(self) -> bool:
        """True while the recorded process (not a later one reusing its pid) runs."""
        try:
            same = abs(process_start_s(self.pid) - self.start_s) < START_TOLERANCE_S
            return same and psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


def read_record(pid_file: Path) -> ProcessRecord | None:
    """The record in ``pid_file``, or None when there is none or it is unreadable."""
    try:
        return ProcessRecord(**json.loads(pid_file.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def spawn(
    command: list[str], log_file: Path, pid_file: Path, env: dict[str, str | None] | None = None
) -> ProcessRecord:
    """Start ``command`` in its own session, detached from this shell, output to ``log_file``.

    ``env`` adds to this process's environment; a None value removes the variable.
    """
    environment = {**os.environ, **(env or {})}
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={name: value for name, value in environment.items() if value is not None},
            close_fds=True,
        )
    record = ProcessRecord(process.pid, command, str(log_file), time.time(), process_start_s(process.pid))
    pid_file.write_text(json.dumps(asdict(record)))
    return record


def stop(record: ProcessRecord, grace_s: float = 15.0) -> None:
    """Stop the process group of ``record``: SIGTERM, then SIGKILL after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(record.pid, sig)
        except ProcessLookupError:
            return
        with contextlib.suppress(TimeoutError):  # then the next signal
            wait_until(lambda: not group_members(record.pid), wait_s, interval_s=0.1, what=f"group {record.pid} to end")
            return


def group_members(pgid: int) -> list[psutil.Process]:
    """The live (non-zombie) processes of process group ``pgid``."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (psutil.Error, ProcessLookupError):
            continue
    return members


def tree_cpu_seconds(process: psutil.Process | None = None) -> float:
    """CPU seconds used so far by ``process`` (default: this one) and its live descendants,
    plus the reaped children it waited for: a measure the load of other programs does not inflate."""
    process = process or psutil.Process()
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        try:
            times = member.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on (host, port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(log_file: str | Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file ('' when missing)."""
    try:
        return "\n".join(Path(log_file).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""

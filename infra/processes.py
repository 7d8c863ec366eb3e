"""Detached background processes recorded in pid files, and port checks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessRecord:
    """What `streamrec up` remembers of a process it started."""

    pid: int
    command: list[str]
    log_file: str
    started_at: float

    def alive(self) -> bool:
        """True while the recorded process (not a later one reusing its pid) runs."""
        deadline = time.monotonic() + 1.0
        while True:
            try:
                with open(f"/proc/{self.pid}/cmdline", "rb") as handle:
                    cmdline = handle.read()
            except OSError:
                return False
            if _is_zombie(self.pid):
                return False
            # Right after Popen returns the child may still be inside exec(), when the kernel
            # reports an empty command line for a moment: read again instead of answering "dead".
            if cmdline or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        return os.path.basename(self.command[0]).encode() in cmdline.replace(b"\0", b" ")


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


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
    record = ProcessRecord(process.pid, command, str(log_file), time.time())
    pid_file.write_text(json.dumps(asdict(record)))
    return record


def stop(record: ProcessRecord, grace_s: float = 15.0) -> None:
    """Stop the process group of ``record``: SIGTERM, then SIGKILL after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(record.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _group_alive(record.pid):
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


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

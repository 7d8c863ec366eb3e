"""ProcessRecord.alive: the recorded process, not another one that later got its pid."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import psutil

from infra.processes import ProcessRecord, group_members, read_record, spawn, stop


def _record_of(child: subprocess.Popen[bytes], create_time: float | None = None) -> ProcessRecord:
    started = psutil.Process(child.pid).create_time() if create_time is None else create_time
    return ProcessRecord(child.pid, ["sleep", "30"], "", time.time(), started)


def test_a_running_child_is_alive_until_it_exits() -> None:
    child = subprocess.Popen(["sleep", "30"])
    record = _record_of(child)
    assert record.alive()  # also right after Popen, while the child may still be inside exec()
    child.kill()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # until it has exited, without reaping it
    assert not record.alive()  # a zombie, not yet waited for, is not alive
    child.wait()
    assert not record.alive()


def test_a_reused_pid_is_not_the_recorded_process() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        earlier = psutil.Process(child.pid).create_time() - 60.0  # the record's process started earlier
        assert not _record_of(child, earlier).alive()
    finally:
        child.kill()
        child.wait()


def test_spawn_records_and_stop_ends_the_whole_group(tmp_path: Path) -> None:
    script = "sleep 60 & sleep 60 & wait"
    record = spawn(["bash", "-c", script], tmp_path / "log", tmp_path / "pid")
    assert read_record(tmp_path / "pid") == record
    assert record.alive()
    deadline = time.monotonic() + 10
    while len(group_members(record.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(group_members(record.pid)) == 3  # bash and its two sleeps
    stop(record, grace_s=5)
    assert not record.alive()
    assert group_members(record.pid) == []


def test_spawn_environment_adds_and_removes_variables(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("STREAMREC_TEST_DROP", "inherited")
    out = tmp_path / "out"
    command = ["bash", "-c", f'echo "$STREAMREC_TEST_ADD/${{STREAMREC_TEST_DROP:-unset}}" > {out}']
    record = spawn(
        command, tmp_path / "log", tmp_path / "pid", {"STREAMREC_TEST_ADD": "added", "STREAMREC_TEST_DROP": None}
    )
    deadline = time.monotonic() + 10
    while record.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out.read_text().strip() == "added/unset"

"""ProcessRecord.alive: the recorded process, not another one that later got its pid."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from infra.polling import wait_until
from infra.processes import ProcessRecord, group_members, process_start_s, read_record, spawn, stop


def _record_of(child: subprocess.Popen[bytes], start_s: float | None = None) -> ProcessRecord:
    started = process_start_s(child.pid) if start_s is None else start_s
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
        earlier = process_start_s(child.pid) - 60.0  # the record's process started earlier
        assert not _record_of(child, earlier).alive()
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(not psutil.LINUX, reason="the start in ticks since boot is Linux's")
def test_a_stepped_wall_clock_does_not_make_a_live_process_look_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CI saw `streamrec up` kill its own new Spark master as "exited during start", and later
    # fail on "port in use" held by its own Ray head: the wall clock had been stepped (a virtual
    # machine resumed), and psutil's create_time() moves with it.
    record = spawn(["sleep", "30"], tmp_path / "log", tmp_path / "pid")
    try:
        real_boot_time = psutil.boot_time()
        monkeypatch.setattr(psutil._pslinux, "boot_time", lambda: real_boot_time + 30.0)
        assert abs(psutil.Process(record.pid).create_time() - record.started_at) > 20  # the clock moved
        assert record.alive()
    finally:
        stop(record, grace_s=5)
    assert not record.alive()


def test_spawn_records_and_stop_ends_the_whole_group(tmp_path: Path) -> None:
    script = "sleep 60 & sleep 60 & wait"
    record = spawn(["bash", "-c", script], tmp_path / "log", tmp_path / "pid")
    assert read_record(tmp_path / "pid") == record
    assert record.alive()
    wait_until(lambda: len(group_members(record.pid)) >= 3, 10, interval_s=0.05, what="bash and its two sleeps")
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
    wait_until(lambda: not record.alive(), 10, interval_s=0.05, what="the command to finish")
    assert out.read_text().strip() == "added/unset"

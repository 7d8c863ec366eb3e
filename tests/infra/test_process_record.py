"""ProcessRecord.alive while a freshly spawned child is still inside exec()."""

from __future__ import annotations

import builtins
import subprocess
import time

import pytest

from infra.processes import ProcessRecord


def test_a_child_inside_exec_counts_as_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        record = ProcessRecord(child.pid, ["sleep", "30"], "", time.time())
        real_open = builtins.open
        reads = {"count": 0}

        class _Empty:
            def __enter__(self) -> _Empty:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def read(self) -> bytes:
                return b""

        def open_proc(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if path == f"/proc/{child.pid}/cmdline" and reads["count"] == 0:
                reads["count"] += 1
                return _Empty()  # what the kernel shows during exec()
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", open_proc)
        assert record.alive()
        assert reads["count"] == 1
    finally:
        child.kill()
        child.wait()
    assert not record.alive()

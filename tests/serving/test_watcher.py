"""ModelWatcher in process: swaps, failed loads, and what a concurrent reader sees."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from infra.polling import wait_until
from serving.watcher import ModelWatcher


@dataclass(frozen=True)
class FakeModel:
    version: str


def _wait(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    wait_until(condition, timeout_s, interval_s=0.001, what="the watcher to catch up")


def test_a_swap_publishes_the_model_and_its_record_as_one_state() -> None:
    """/healthz reads the model and its swaps from one published state: a reader's snapshot
    never changes under it, and a new state always carries the record of its own version
    (the model was once assigned before its record was appended)."""
    alias = ["1"]
    watcher: ModelWatcher[FakeModel] = ModelWatcher(lambda: alias[0], FakeModel, poll_s=0.001)
    watcher.load_now()
    snapshots = [watcher.state]
    watcher.start()
    try:
        for version in ("2", "3"):
            alias[0] = version
            _wait(lambda: watcher.current == FakeModel(alias[0]))
            snapshots.append(watcher.state)
    finally:
        watcher.stop()
    for expected, state in zip(("1", "2", "3"), snapshots, strict=True):
        assert state.current == FakeModel(expected)
        assert [swap.to_version for swap in state.swaps] == ["1", "2", "3"][: int(expected)]
    assert snapshots[2].swaps[-1].from_version == "2" and snapshots[2].swaps[-1].load_seconds >= 0


def test_a_version_that_fails_to_load_keeps_the_old_one_serving() -> None:
    def load(version: str) -> FakeModel:
        if version == "2":
            raise ValueError("corrupt artifact")
        return FakeModel(version)

    alias = ["1"]
    watcher: ModelWatcher[FakeModel] = ModelWatcher(lambda: alias[0], load, poll_s=0.001)
    watcher.load_now()
    watcher.start()
    try:
        alias[0] = "2"
        _wait(lambda: watcher.failed_version is not None)
    finally:
        watcher.stop()
    assert watcher.current == FakeModel("1") and [s.to_version for s in watcher.swaps] == ["1"]
    assert watcher.failed_version == "2" and "corrupt artifact" in (watcher.last_error or "")


def test_load_now_requires_a_version_unless_told_otherwise() -> None:
    watcher: ModelWatcher[FakeModel] = ModelWatcher(lambda: None, FakeModel, poll_s=1.0)
    with pytest.raises(LookupError, match="promote one"):
        watcher.load_now()
    assert watcher.load_now(required=False) is None and watcher.current is None

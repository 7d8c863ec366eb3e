"""ModelWatcher in process: swaps, failed loads, and what a concurrent reader sees."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pytest

from infra.polling import wait_until
from serving.watcher import ModelWatcher

T = TypeVar("T")


@dataclass(frozen=True)
class FakeModel:
    version: str


def _wait(condition: Callable[[], T | None], timeout_s: float = 10.0) -> T:
    return wait_until(condition, timeout_s, interval_s=0.001, what="the watcher to catch up")


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


class FlakyRegistry:
    """An alias and its versions' artifacts behind one registry that can be taken down."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.down = False
        self.loads: list[str] = []

    def resolve(self) -> str:
        if self.down:
            raise ConnectionError("registry refused the connection")
        return self.alias

    def load(self, version: str) -> FakeModel:
        self.loads.append(version)
        if self.down:
            raise ConnectionError("artifact download refused")
        return FakeModel(version)


def test_an_unreachable_registry_keeps_the_model_and_says_so_until_it_answers() -> None:
    """Reading the alias fails: the model serves on and last_error says why, and says nothing
    once the alias reads again (it stayed set while the alias named what serves)."""
    registry = FlakyRegistry("1")
    watcher: ModelWatcher[FakeModel] = ModelWatcher(registry.resolve, registry.load, poll_s=0.001)
    watcher.load_now()
    watcher.start()
    try:
        registry.down = True
        message = _wait(lambda: watcher.last_error)
        assert watcher.current == FakeModel("1")
        registry.down = False
        _wait(lambda: watcher.last_error is None)
    finally:
        watcher.stop()
    assert watcher.current == FakeModel("1") and registry.loads == ["1"]
    assert "cannot read the serving alias, still serving 1: registry refused" in message


def test_a_version_whose_load_met_the_registry_down_is_taken_once_it_answers() -> None:
    """The alias moves, the registry goes down while the new version downloads: the old one
    serves on, and the new one is loaded once the registry answers, with no restart (a failed
    version was never tried again before)."""
    registry = FlakyRegistry("1")
    watcher: ModelWatcher[FakeModel] = ModelWatcher(registry.resolve, registry.load, poll_s=0.001)
    watcher.load_now()
    registry.alias = "2"
    registry.down = True
    watcher._swap_to("2")  # what the poller does when it sees the alias move: here the download fails
    assert watcher.failed_version == "2" and watcher.current == FakeModel("1")
    message = watcher.last_error or ""
    watcher.start()
    try:
        _wait(lambda: "cannot read the serving alias" in (watcher.last_error or ""))
        registry.down = False
        _wait(lambda: watcher.current == FakeModel("2"))
    finally:
        watcher.stop()
    assert watcher.last_error is None and watcher.failed_version is None
    assert [swap.to_version for swap in watcher.swaps] == ["1", "2"]
    assert message.startswith("version 2 failed to load (try 1, next in 0 s), still serving 1: artifact download")


def test_a_version_that_keeps_failing_is_tried_again_with_backoff() -> None:
    """Doubling waits from poll_s: at a 10 ms poll, tries about 0, 20, 60, 140 and 300 ms after
    the first, so at most 6 in the 0.3 s after the second (a try at every poll: about 30)."""

    def load(version: str) -> FakeModel:
        loads.append(version)
        if version == "2":
            raise ValueError("corrupt artifact")
        return FakeModel(version)

    loads: list[str] = []
    alias = ["1"]
    watcher: ModelWatcher[FakeModel] = ModelWatcher(lambda: alias[0], load, poll_s=0.01)
    watcher.load_now()
    watcher.start()
    try:
        alias[0] = "2"
        _wait(lambda: loads.count("2") >= 2)
        time.sleep(0.3)
    finally:
        watcher.stop()
    assert 2 <= loads.count("2") <= 6, loads
    assert watcher.current == FakeModel("1") and "corrupt artifact" in (watcher.last_error or "")

"""The online history's tail thread without a broker: stop and start again."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from infra.polling import wait_until
from infra.settings import get_settings
from serving.history.store import OnlineHistory
from serving.history.tail import HistoryTail


def test_a_tail_that_missed_its_stop_timeout_ends_instead_of_resuming(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A tail stuck past stop()'s timeout (a hung broker call) must end once unstuck, not go on
    beside the tail the next start() made (the two shared one stop event once: two writers)."""
    release = threading.Event()
    threads: list[str] = []

    def stuck_connect(self: HistoryTail):  # noqa: ANN202
        threads.append(threading.current_thread().name)
        release.wait(10)
        raise ConnectionError("no broker")

    monkeypatch.setattr(OnlineHistory, "bootstrap", lambda self: None)
    monkeypatch.setattr(HistoryTail, "_connect", stuck_connect)
    history = OnlineHistory(get_settings(home=tmp_path), user_sequences_version=0, item_vocab_version=0, max_len=4)
    history.start()
    wait_until(lambda: len(threads) == 1, 10, interval_s=0.01, what="the first tail to connect")
    first = [t for t in threading.enumerate() if t.name.startswith("online-history-")]
    history.stop(timeout_s=0.05)  # stuck in _connect: it misses the timeout
    history.start()
    release.set()
    try:
        assert len(first) == 1
        first[0].join(5)
        assert not first[0].is_alive()
        assert history.status()["running"]
        assert len([t for t in threading.enumerate() if t.name.startswith("online-history-")]) == 1
    finally:
        history.stop(timeout_s=5)

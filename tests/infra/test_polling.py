"""infra.polling.wait_until: the value, the deadline, the message."""

from __future__ import annotations

import time

import pytest

from infra.polling import wait_until


def test_returns_the_first_truthy_value() -> None:
    answers = iter([None, 0, "", "ready"])
    assert wait_until(lambda: next(answers), timeout_s=5, interval_s=0, what="an answer") == "ready"


def test_asks_once_even_without_time() -> None:
    calls = []
    assert wait_until(lambda: calls.append(1) or True, timeout_s=0, what="anything")
    assert calls == [1]


def test_times_out_naming_what_and_how_long() -> None:
    calls = []
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"gave up waiting for the broker to answer after 0\.[2-9] s"):
        wait_until(lambda: calls.append(1), timeout_s=0.2, interval_s=0.05, what="the broker to answer")
    assert 0.2 <= time.monotonic() - started < 1.0
    assert 3 <= len(calls) <= 6  # every interval, and once more at the deadline


def test_predicate_errors_propagate() -> None:
    def broken() -> bool:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        wait_until(broken, timeout_s=1, what="anything")

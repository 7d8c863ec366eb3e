"""Waiting for a condition: poll it until it holds or a deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T | None], timeout_s: float, interval_s: float = 0.5, *, what: str) -> T:
    """Call ``predicate`` every ``interval_s`` seconds until it returns a truthy value, and return
    that value. It is called at least once, and once more at the deadline; after ``timeout_s``
    seconds a ``TimeoutError`` names ``what`` (what was awaited) and the time waited."""
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError(f"gave up waiting for {what} after {now - started:.1f} s")
        time.sleep(max(0.0, min(interval_s, deadline - now)))

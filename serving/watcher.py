"""A replica's model watcher: follows a serving alias and swaps models off the request path.

Every ``poll_s`` seconds a daemon thread asks MLflow which version the alias names. A new
version is downloaded, loaded and indexed in that thread while requests keep using the
current one; then one reference assignment swaps it in together with its SwapRecord
(requests that already took the old one finish with it; a reader of ``state`` never sees a
version without its record). A version that fails to load keeps the old one serving; the
failure is logged and shown by /healthz, and the version is tried again after a backoff
(doubling from ``poll_s`` to ``RETRY_MAX_S``: its artifacts may have been out of reach) and
at once when the registry answers again after it did not. A registry that does not answer
keeps the current model serving, shown by /healthz until it answers again. The retrieval
Catalog and the ranking ServedRanker are watched alike, each by a watcher of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

logger = logging.getLogger("ray.serve.streamrec")  # into the replica logs of Ray Serve
RETRY_MAX_S = 300.0  # the longest wait before a version that failed to load is tried again


@dataclass(frozen=True)
class SwapRecord:
    """One swap: from which version to which, and how long loading took."""

    from_version: str | None
    to_version: str
    load_seconds: float
    at: float


class Versioned(Protocol):
    """A loaded model version."""

    @property
    def version(self) -> str: ...


Model = TypeVar("Model", bound=Versioned)


@dataclass(frozen=True)
class WatchedState(Generic[Model]):
    """What a watcher serves, published as one value: the model and the swaps that led to it."""

    current: Model | None = None
    swaps: tuple[SwapRecord, ...] = ()


class ModelWatcher(Generic[Model]):
    """Holds the current model and replaces it when the alias moves."""

    def __init__(
        self,
        resolve: Callable[[], str | None],
        load: Callable[[str], Model],
        poll_s: float,
        on_swap: Callable[[SwapRecord], None] | None = None,
    ) -> None:
        self._resolve = resolve
        self._on_swap = on_swap
        self._load = load
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.state: WatchedState[Model] = WatchedState()
        self.failed_version: str | None = None
        self.last_error: str | None = None
        self._failures = 0  # consecutive failed loads of failed_version
        self._retry_at = 0.0  # monotonic time of its next try
        self._unreachable = False  # the last read of the alias failed

    @property
    def current(self) -> Model | None:
        """The model requests use now (None before the first load)."""
        return self.state.current

    @property
    def swaps(self) -> tuple[SwapRecord, ...]:
        """Every swap since start, the last one to ``current``."""
        return self.state.swaps

    def load_now(self, required: bool = True) -> Model | None:
        """Load the alias's version synchronously (replica start). ``required``: raise when the
        alias names none or it does not load; otherwise keep none and let the poller find one."""
        version = self._resolve()
        if version is None:
            if not required:
                return None
            raise LookupError("the serving alias names no model version; promote one (`streamrec promote`)")
        self._swap_to(version)
        if self.current is None and required:
            raise RuntimeError(self.last_error or f"version {version} did not load")
        return self.current

    def start(self) -> None:
        """Poll the alias in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                version = self._resolve()
            except Exception as error:  # the registry may be unreachable for a while: keep serving
                self._unreachable, self._retry_at = True, 0.0  # a failed version: tried again once it answers
                self.last_error = f"cannot read the serving alias, still serving {self._current_version()}: {error}"
                logger.warning(self.last_error)
                continue
            if self._unreachable:
                self._unreachable, self.last_error = False, None
                logger.info("the serving alias is readable again: it names version %s", version)
            current = self._current_version()
            if version is not None and version == current and self.failed_version is not None:
                self.failed_version = self.last_error = None  # the alias is back on what serves (a rollback)
            if version is None or version == current:
                continue
            if version == self.failed_version and time.monotonic() < self._retry_at:
                continue
            self._swap_to(version)

    def _swap_to(self, version: str) -> None:
        started = time.monotonic()
        try:
            catalog = self._load(version)
        except Exception as error:
            self._failures = self._failures + 1 if version == self.failed_version else 1
            wait_s = min(self._poll_s * 2**self._failures, RETRY_MAX_S)
            self.failed_version, self._retry_at = version, time.monotonic() + wait_s
            self.last_error = (
                f"version {version} failed to load (try {self._failures}, next in {wait_s:.0f} s), "
                f"still serving {self._current_version()}: {error}"
            )
            logger.error(self.last_error)
            return
        before = self._current_version()
        record = SwapRecord(before, version, time.monotonic() - started, time.time())
        self.state = WatchedState(catalog, (*self.state.swaps, record))  # the swap: one reference assignment
        self.failed_version = None
        self._failures = 0
        self.last_error = None
        if self._on_swap is not None:
            self._on_swap(record)
        logger.info("serving version %s (was %s), loaded in %.1f s", version, before, time.monotonic() - started)

    def _current_version(self) -> str | None:
        return self.current.version if self.current else None

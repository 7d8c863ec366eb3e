"""A replica's model watcher: follows the serving alias and swaps catalogs off the request path.

Every ``poll_s`` seconds a daemon thread asks MLflow which version the alias names. A new
version is downloaded, loaded and indexed in that thread while requests keep using the
current catalog; then one reference assignment swaps it in (requests that already took the
old catalog finish with it). A version that fails to load keeps the old one serving; the
failure is logged and shown by /healthz until the alias moves again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from serving.catalog import Catalog

logger = logging.getLogger("ray.serve.streamrec")  # into the replica logs of Ray Serve


@dataclass(frozen=True)
class SwapRecord:
    """One swap: from which version to which, and how long loading took."""

    from_version: str | None
    to_version: str
    load_seconds: float
    at: float


class ModelWatcher:
    """Holds the current Catalog and replaces it when the alias moves."""

    def __init__(
        self,
        resolve: Callable[[], str | None],
        load: Callable[[str], Catalog],
        poll_s: float,
        on_swap: Callable[[SwapRecord], None] | None = None,
    ) -> None:
        self._resolve = resolve
        self._on_swap = on_swap
        self._load = load
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.current: Catalog | None = None
        self.swaps: list[SwapRecord] = []
        self.failed_version: str | None = None
        self.last_error: str | None = None

    def load_now(self) -> Catalog:
        """Load the alias's version synchronously (replica start); raises when there is none."""
        version = self._resolve()
        if version is None:
            raise LookupError("the serving alias names no model version; promote one (`streamrec promote`)")
        self._swap_to(version)
        if self.current is None:
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
            except Exception as error:  # the registry may be briefly unreachable: keep serving
                self.last_error = f"cannot read the serving alias: {error}"
                logger.warning(self.last_error)
                continue
            current = self.current.version if self.current else None
            if version is not None and version == current and self.failed_version is not None:
                self.failed_version = self.last_error = None  # the alias is back on what serves (a rollback)
            if version is None or version in (current, self.failed_version):
                continue
            self._swap_to(version)

    def _swap_to(self, version: str) -> None:
        started = time.monotonic()
        try:
            catalog = self._load(version)
        except Exception as error:
            self.failed_version = version
            self.last_error = f"version {version} failed to load, still serving {self._current_version()}: {error}"
            logger.error(self.last_error)
            return
        before = self._current_version()
        self.current = catalog  # the swap: one reference assignment
        self.failed_version = None
        self.last_error = None
        record = SwapRecord(before, version, time.monotonic() - started, time.time())
        self.swaps.append(record)
        if self._on_swap is not None:
            self._on_swap(record)
        logger.info("serving version %s (was %s), loaded in %.1f s", version, before, time.monotonic() - started)

    def _current_version(self) -> str | None:
        return self.current.version if self.current else None

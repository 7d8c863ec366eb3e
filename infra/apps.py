"""Applications that live inside the cluster (not processes `streamrec up` spawns), such as
the Ray Serve application: started, probed and stopped with the mini-cluster's components.

Packages above infra register them through the ``streamrec.apps`` entry-point group (each
entry names an object with the ``ClusterApp`` methods), so infra never imports them.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Protocol

from infra.cluster import ComponentState
from infra.settings import Settings


class ClusterApp(Protocol):
    """An application deployed onto the cluster's services."""

    name: str

    def start(self, settings: Settings, required: bool) -> ComponentState | None:
        """Deploy it (or confirm it runs). ``required`` (it was named): raise a StreamrecError
        when it cannot start; otherwise return None when it has nothing to run yet."""
        ...

    def state(self, settings: Settings) -> ComponentState | None:
        """Its health now; None when it is not deployed."""
        ...

    def stop(self, settings: Settings) -> bool:
        """Remove it; False when it was not deployed."""
        ...


def cluster_apps() -> list[ClusterApp]:
    """The registered applications, by entry-point name."""
    return [entry.load() for entry in sorted(entry_points(group="streamrec.apps"), key=lambda e: e.name)]


def not_running(app: ClusterApp, address: str, detail: str) -> ComponentState:
    """The row of an application that is not deployed."""
    return ComponentState(app.name, "in-cluster", address, False, detail, None, "")

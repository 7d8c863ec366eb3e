"""Lifecycle of the local mini-cluster: `up`, `status` and `down`."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from infra.components import Component, Health, all_components
from infra.errors import StreamrecError
from infra.polling import wait_until
from infra.processes import log_tail, port_in_use, read_record, spawn, stop
from infra.settings import Settings


class ClusterError(StreamrecError):
    """A component could not be started or reached; the message says which and why."""


@dataclass(frozen=True)
class ComponentState:
    """One row of the cluster table."""

    name: str
    mode: str  # "local" or "external"
    address: str
    healthy: bool
    detail: str
    pid: int | None
    log_file: str


def select(settings: Settings, names: list[str] | None) -> list[Component]:
    """The components named (all when ``names`` is empty), validated."""
    components = all_components(settings)
    if not names:
        return components
    known = {component.name: component for component in components}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ClusterError(f"unknown component(s) {unknown}; choose from {list(known)}")
    return [component for component in components if component.name in names]


def _wait_healthy(component: Component, timeout_s: float, pid_alive=lambda: True) -> Health:
    """The component's health once it is ok or its process died; its last health after ``timeout_s``."""
    health = component.probe()

    def settled() -> bool:
        nonlocal health
        health = component.probe()
        return health.ok or not pid_alive()

    if not health.ok and pid_alive():
        with contextlib.suppress(TimeoutError):
            wait_until(settled, timeout_s, interval_s=0.5, what=f"{component.name} to become healthy")
    return health


def _state(component: Component, health: Health) -> ComponentState:
    record = read_record(component.pid_file) if component.local else None
    return ComponentState(
        name=component.name,
        mode="local" if component.local else "external",
        address=component.address,
        healthy=health.ok,
        detail=health.detail,
        pid=record.pid if record and record.alive() else None,
        log_file=str(component.log_file) if component.local else "",
    )


def start(component: Component) -> ComponentState:
    """Start ``component`` unless it already runs (or is external), then wait until healthy."""
    timeout_s = component.settings.start_timeout_s
    if not component.local:
        health = _wait_healthy(component, min(timeout_s, 15.0))
        if not health.ok:
            raise ClusterError(f"external {component.name} at {component.address} is not healthy: {health.detail}")
        return _finish(component, health)

    record = read_record(component.pid_file)
    if record and record.alive():
        health = _wait_healthy(component, timeout_s, record.alive)
        if not health.ok:
            raise ClusterError(
                f"{component.name} (pid {record.pid}) runs but is not healthy: {health.detail}; "
                f"see {record.log_file} or run `streamrec down`"
            )
        return _finish(component, Health(True, f"already running; {health.detail}"))

    for host, port in component.ports():
        if port_in_use(host, port):
            raise ClusterError(
                f"port {port} on {host} is already in use, so {component.name} cannot start there; "
                f"stop whatever listens on it or choose another port in the settings"
            )
    component.prepare()
    record = spawn(component.command(), component.log_file, component.pid_file, component.environment())
    health = _wait_healthy(component, timeout_s, record.alive)
    if not health.ok:
        alive = record.alive()
        stop(record)
        component.pid_file.unlink(missing_ok=True)
        reason = "did not become healthy in time" if alive else "exited during start"
        raise ClusterError(
            f"{component.name} {reason}: {health.detail}\n--- last lines of {record.log_file} ---\n"
            f"{log_tail(record.log_file)}"
        )
    return _finish(component, health)


def _finish(component: Component, health: Health) -> ComponentState:
    note = component.after_healthy()
    if note:
        health = Health(health.ok, f"{health.detail}; {note}")
    return _state(component, health)


def up(settings: Settings, names: list[str] | None = None) -> list[ComponentState]:
    """Start (or check) every selected component; safe to run again."""
    settings.home.mkdir(parents=True, exist_ok=True)
    return [start(component) for component in select(settings, names)]


def status(settings: Settings, names: list[str] | None = None) -> list[ComponentState]:
    """Probe every selected component once."""
    return [_state(component, component.probe()) for component in select(settings, names)]


def down(settings: Settings, names: list[str] | None = None) -> list[str]:
    """Stop exactly the processes `up` started (in reverse order); returns what was stopped."""
    stopped = []
    for component in reversed(select(settings, names)):
        record = read_record(component.pid_file)
        if record is None:
            continue
        was_alive = record.alive()
        stop(record)  # the whole process group, even if its leader already died
        component.after_stop()
        if was_alive:
            stopped.append(f"{component.name} (pid {record.pid})")
        component.pid_file.unlink(missing_ok=True)
    return stopped

"""What answers HTTP for Ray Serve on a Ray node: HAProxy (the default) or Ray's Python proxy.

Ray Serve reads the choice from the environment of the Ray node's processes
(``RAY_SERVE_ENABLE_HA_PROXY``): the controller then runs an HAProxy on each node, in front
of replicas that listen on HTTP ports of their own, and the Python proxy leaves the request
path (docs/serving.md, "The ingress"). So ``serve.ingress`` takes effect when the head starts.

Ray's HAProxy defaults are machine-global: files under /tmp/haproxy-serve, the stats page on
port 8404, its Prometheus exporter on 9101 and a fallback Python proxy on 8500. Two clusters
on one machine (a developer's and the test suite's) would share or fight over them, so each
node gets free ports and the cluster's files live in a directory of its own home.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

import psutil

from infra.errors import StreamrecError
from infra.processes import free_port
from infra.settings import Settings

logger = logging.getLogger(__name__)

ENABLE_VARIABLE = "RAY_SERVE_ENABLE_HA_PROXY"
# HAProxy binds its admin socket <dir>/<node id: 56 hex>/admin.sock through the temporary name
# "admin.sock.<pid: up to 7 digits>.tmp", and a unix socket path holds 107 bytes: the directory gets 27.
MAX_DIRECTORY_CHARS = 27
# Ray holds a stopping replica reachable this long so load balancers can drop it (30 s by
# default, for cloud load balancers); the local HAProxy drops it within a reload (about 0.1 s
# after the controller's broadcast), and HAProxy retries a refused connection on another
# replica. 30 s made every `streamrec down serve` and redeploy wait 30 s.
LOCAL_DRAINING_PERIOD_S = 5


def haproxy_dir(settings: Settings) -> Path:
    """The directory of the cluster's HAProxy files: one per streamrec home, in the temp dir.

    Not inside the home itself: unix socket paths are limited (``MAX_DIRECTORY_CHARS``) and
    homes are longer than that.
    """
    digest = hashlib.sha256(str(settings.home).encode()).hexdigest()[:10]
    directory = Path(tempfile.gettempdir()) / f"streamrec-{digest}"
    if len(str(directory)) > MAX_DIRECTORY_CHARS:
        raise StreamrecError(
            f"HAProxy's socket paths under {directory} would be too long for a unix socket: set TMPDIR to a "
            f"shorter directory, or STREAMREC_SERVE_INGRESS=python"
        )
    return directory


def ingress_environment(settings: Settings, head: bool) -> dict[str, str | None]:
    """Environment of a Ray node's processes (``ray start``) for the ingress of the settings."""
    if settings.serve.ingress == "python":
        return {ENABLE_VARIABLE: None}
    directory = haproxy_dir(settings)
    environment: dict[str, str | None] = {
        ENABLE_VARIABLE: "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(directory / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(directory / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(directory),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(directory / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(directory / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(LOCAL_DRAINING_PERIOD_S),
    }
    if head:  # the controller starts the fallback proxy on the head only
        environment["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] = str(free_port())
    return environment


def stop_stale_haproxy(settings: Settings) -> list[int]:
    """Stop HAProxy processes left by an earlier head of this home; returns their pids.

    HAProxy is a child of Ray's HAProxyManager actor, in that actor's process group: when the
    head is stopped, the actor dies and its HAProxy lives on, holding the serving port (with
    SO_REUSEPORT, so the next head's HAProxy binds beside it and the kernel splits the
    connections between the two).
    """
    marker = f"{haproxy_dir(settings)}/"
    stale = []
    for process in psutil.process_iter(["name", "cmdline"]):
        command = process.info["cmdline"] or []
        if process.info["name"] == "haproxy" and any(part.startswith(marker) for part in command):
            stale.append(process)
    for process in stale:
        logger.info("stopping HAProxy pid %d left by an earlier Ray head of this home", process.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(stale, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)
    return [process.pid for process in stale]


def clean_up(settings: Settings) -> list[int]:
    """After the Ray head stopped: stop any HAProxy of this home that outlived it (it would hold
    the serving port) and remove the home's HAProxy directory; returns the pids stopped."""
    stopped = stop_stale_haproxy(settings)
    shutil.rmtree(haproxy_dir(settings), ignore_errors=True)
    return stopped

"""Access to the Ray cluster: token authentication, the health probe and the client connection.

An open Ray port runs anyone's code, so the local head runs with Ray's token authentication
on by default (``ray_auth: token``). The token lives in one file, ``ray_auth_token_file``
(default ``<home>/ray/auth_token``, created by `streamrec up` with mode 0600); the Ray head,
every process it starts and every streamrec client read it from there, and the real
``~/.ray/auth_token`` is neither read nor written. For an external cluster the setting names
that cluster's token file. ``ray_auth: disabled`` turns authentication off.

Every streamrec process that talks to Ray goes through here: ``connect`` (drivers: training,
tests, benchmarks, serving, workflows), ``ray_environment`` (processes streamrec starts) and
``cluster_nodes`` (the health probe: Ray's JSON state API over authenticated HTTP).
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import requests

from infra.errors import StreamrecError
from infra.settings import Settings

MODE_VARIABLE = "RAY_AUTH_MODE"  # Ray's own variables, read by its C++ core and by `ray start`
TOKEN_PATH_VARIABLE = "RAY_AUTH_TOKEN_PATH"
TOKEN_VARIABLE = "RAY_AUTH_TOKEN"  # would win over the file: streamrec never passes it on
TOKEN_SETTING = "STREAMREC_RAY_AUTH_TOKEN_FILE"
MODE_SETTING = "STREAMREC_RAY_AUTH"
REQUEST_TIMEOUT_S = 5.0


class RayAccessError(StreamrecError):
    """Ray cannot be reached or answered with an error."""


class RayAuthenticationError(RayAccessError):
    """Ray refused us, or no token is at hand; the message names the setting to fix."""


def token_auth(settings: Settings) -> bool:
    """Whether the cluster is reached (and the local head runs) with token authentication."""
    return settings.ray.auth == "token"


def ray_environment(settings: Settings) -> dict[str, str | None]:
    """Environment of a process that runs Ray (the head) or connects to it; None = unset."""
    if not token_auth(settings):
        return {MODE_VARIABLE: "disabled", TOKEN_PATH_VARIABLE: None, TOKEN_VARIABLE: None}
    return {MODE_VARIABLE: "token", TOKEN_PATH_VARIABLE: str(settings.ray_token_path), TOKEN_VARIABLE: None}


def create_local_token(settings: Settings) -> Path:
    """The local head's token file, created (256 random bits, mode 0600) when missing."""
    path = settings.ray_token_path
    if path.is_file() and path.read_text().strip():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path


def read_token(settings: Settings) -> str:
    """The token clients present; a missing or empty file is an error naming the setting."""
    path = settings.ray_token_path
    try:
        token = path.read_text().strip()
    except OSError:
        token = ""
    if not token:
        raise RayAuthenticationError(
            f"Ray token authentication is on but the token file {path} is missing or empty: "
            f"set {TOKEN_SETTING} to the cluster's token file (`streamrec up ray` creates one for the local "
            f"head), or {MODE_SETTING}=disabled for a cluster without authentication"
        )
    return token


def auth_headers(settings: Settings) -> dict[str, str]:
    """HTTP headers that authenticate to the Ray dashboard and its REST APIs."""
    return {"Authorization": f"Bearer {read_token(settings)}"} if token_auth(settings) else {}


def use_ray_auth(settings: Settings) -> None:
    """Make this process's Ray client use the settings' authentication.

    Ray reads its mode and token from the environment once, at import; when Ray is already
    imported (but not connected) its configuration is read again, as ``ray.init`` itself
    does when it turns token authentication on for a new local cluster.
    """
    for name, value in ray_environment(settings).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if "ray._raylet" in sys.modules and not sys.modules["ray"].is_initialized():
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def cluster_nodes(settings: Settings) -> list[dict[str, Any]]:
    """The cluster's nodes from Ray's state API (JSON), authenticated; raises RayAccessError."""
    url = f"{settings.ray.dashboard_url}/api/v0/nodes"
    try:
        response = requests.get(url, headers=auth_headers(settings), timeout=REQUEST_TIMEOUT_S)
    except requests.RequestException as error:
        raise RayAccessError(f"no answer from the Ray dashboard at {url}: {error.__class__.__name__}") from error
    if response.status_code in (401, 403):
        raise RayAuthenticationError(_refused(settings, response.status_code))
    if response.status_code != 200:
        raise RayAccessError(f"the Ray dashboard at {url} answered {response.status_code}: {response.text[:200]}")
    try:
        return list(response.json()["data"]["result"]["result"])
    except (ValueError, KeyError, TypeError) as error:
        raise RayAccessError(f"the Ray dashboard at {url} answered without a node list") from error


def _refused(settings: Settings, status: int) -> str:
    where = f"the Ray cluster at {settings.ray.address}"
    if not token_auth(settings):
        return (
            f"authentication required: {where} uses token authentication but {MODE_SETTING}=disabled; "
            f"set {MODE_SETTING}=token and {TOKEN_SETTING} to its token file"
        )
    if status == 401:
        return f"authentication failed: {where} received no token; check {TOKEN_SETTING}"
    return (
        f"authentication failed: {where} rejected the token in {settings.ray_token_path}; "
        f"set {TOKEN_SETTING} to that cluster's token file"
    )


def connect(settings: Settings, **init_options: Any) -> None:
    """Connect this process to the cluster of ``settings`` (no-op when already connected).

    A wrong or missing token is reported at once, in one line, from an authenticated
    dashboard request, instead of after Ray's own connection retries.
    """
    import ray

    if ray.is_initialized():
        return
    use_ray_auth(settings)
    try:
        cluster_nodes(settings)
    except RayAuthenticationError:
        raise
    except RayAccessError:
        pass  # the dashboard may be unreachable from here (only the GCS exposed): let Ray try
    init_options.setdefault("logging_level", logging.WARNING)
    try:
        ray.init(address=settings.ray.address, **init_options)
    except ConnectionError as error:
        raise RayAccessError(
            f"cannot connect to Ray at {settings.ray.address}: {error}; is it running (`streamrec status`)? "
            f"If it uses token authentication, check {TOKEN_SETTING}"
        ) from error


def cluster_cpus(nodes: list[dict[str, Any]]) -> float:
    """CPUs offered by the alive nodes of a ``cluster_nodes`` list."""
    return sum(float(node.get("resources_total", {}).get("CPU", 0.0)) for node in nodes if node.get("state") == "ALIVE")

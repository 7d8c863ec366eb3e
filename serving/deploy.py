"""Start, inspect and stop the serving application on the Ray cluster of the settings.

``deploy`` builds the application of the production version (``serving.app``), starts Ray
Serve's HTTP ingress on ``serve_host:serve_port`` and runs it; it returns once /healthz
answers 200. The application lives in the cluster, not in the calling process. Which ingress
answers (HAProxy or Ray's Python proxy) the cluster decided when its head started
(``serve.ingress``, infra/serve_ingress.py); ``cluster_ingress`` reads which one runs.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import requests

from infra import ray_access
from infra.polling import wait_until
from infra.settings import Settings
from serving.config import APP_NAME, production_config
from serving.errors import ServeError

logger = logging.getLogger(__name__)
# Ray Serve's actor class on each node that runs the ingress, by ingress.
INGRESS_ACTORS: dict[str, Literal["haproxy", "python"]] = {"HAProxyManager": "haproxy", "ProxyActor": "python"}


def base_url(settings: Settings) -> str:
    """The HTTP root of the serving application."""
    return f"http://{settings.serve.host}:{settings.serve.port}"


def deploy(settings: Settings, timeout_s: float = 180.0) -> dict[str, Any]:
    """Run the serving application of the production model; returns its /healthz body."""
    from ray import serve

    from serving.app import build_app

    config = production_config(settings)
    ray_access.connect(settings, log_to_driver=False)
    start_serve(settings)
    serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
    running = cluster_ingress(settings)
    if running not in (None, settings.serve.ingress):
        logger.warning(
            "serving answers through the %s ingress, though serve.ingress is %s: the Ray head decides when it "
            "starts (`streamrec down ray && streamrec up`)",
            running,
            settings.serve.ingress,
        )
    return wait_healthy(settings, timeout_s)


def start_serve(settings: Settings) -> None:
    """Start Ray Serve's controller and ingress on the settings' HTTP host and port (or connect
    to the running ones).

    On a busy machine an ingress actor can miss its readiness checks while it starts (seen at a
    load average of 16 on 2 cores: the HAProxy manager and the fallback proxy were replaced by
    the controller before they ran), and ``serve.start`` then raises although the controller
    runs on and starts new ones: a second call connects to it, and ``deploy`` waits for
    /healthz anyway.
    """
    from ray import serve
    from ray.exceptions import RayActorError

    options = {"host": settings.serve.host, "port": settings.serve.port}
    try:
        serve.start(http_options=options)
    except (RayActorError, TimeoutError) as error:
        logger.warning("a Serve ingress actor did not start in time (%s); the controller starts another", error)
        serve.start(http_options=options)


def cluster_ingress(settings: Settings) -> Literal["haproxy", "python"] | None:
    """Which ingress the cluster's Serve runs on the head, from Ray's state API; None before
    Serve starts, or where the dashboard does not answer."""
    url = f"{settings.ray.dashboard_url}/api/v0/actors"
    params = {"filter_keys": ["state", "ray_namespace"], "filter_predicates": ["=", "="],
              "filter_values": ["ALIVE", "serve"], "detail": "false"}  # fmt: skip
    try:
        response = requests.get(url, params=params, headers=ray_access.auth_headers(settings), timeout=10)
        actors = response.json()["data"]["result"]["result"]
    except (requests.RequestException, ValueError, KeyError, TypeError, ray_access.RayAccessError):
        return None
    # The HAProxy ingress keeps a Python proxy on the head as a fallback: HAProxy wins.
    found = {INGRESS_ACTORS[actor["class_name"]] for actor in actors if actor.get("class_name") in INGRESS_ACTORS}
    return "haproxy" if "haproxy" in found else found.pop() if found else None


def wait_healthy(settings: Settings, timeout_s: float) -> dict[str, Any]:
    """Poll /healthz until it answers 200; raises ServeError with the last answer."""
    last = "no answer"

    def healthy() -> dict[str, Any] | None:
        nonlocal last
        try:
            response = requests.get(f"{base_url(settings)}/healthz", timeout=5)
        except requests.RequestException as error:
            last = error.__class__.__name__
            return None
        if response.status_code == 200:
            return dict(response.json())
        last = f"{response.status_code}: {response.text[:300]}"
        return None

    try:
        return wait_until(healthy, timeout_s, interval_s=0.5, what=f"serving at {base_url(settings)} to answer 200")
    except TimeoutError as error:
        raise ServeError(
            f"serving at {base_url(settings)} did not become healthy in {timeout_s:.0f} s ({last})"
        ) from error


def health(settings: Settings) -> dict[str, Any]:
    """The /healthz body; raises ServeError when serving does not answer."""
    try:
        response = requests.get(f"{base_url(settings)}/healthz", timeout=10)
    except requests.RequestException as error:
        raise ServeError(f"serving at {base_url(settings)} does not answer ({error.__class__.__name__})") from error
    try:
        body = dict(response.json())
    except ValueError as error:  # Serve's proxy without the streamrec app answers 404 in plain text
        raise ServeError(
            f"{base_url(settings)} answers {response.status_code} without the {APP_NAME} application"
        ) from error
    body["http_status"] = response.status_code
    return body


def undeploy(settings: Settings) -> bool:
    """Delete the serving application; False when it was not running."""
    from ray import serve

    ray_access.connect(settings, log_to_driver=False)
    if APP_NAME not in serve.status().applications:
        return False
    serve.delete(APP_NAME)
    return True

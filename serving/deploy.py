"""Start, inspect and stop the serving application on the Ray cluster of the settings.

``deploy`` builds the application of the production version (``serving.app``), starts Ray
Serve's HTTP proxy on ``serve_host:serve_port`` and runs it; it returns once /healthz
answers 200. The application lives in the cluster, not in the calling process.
"""

from __future__ import annotations

from typing import Any

import requests

from infra import ray_access
from infra.polling import wait_until
from infra.settings import Settings
from serving.config import APP_NAME, production_config
from serving.errors import ServeError


def base_url(settings: Settings) -> str:
    """The HTTP root of the serving application."""
    return f"http://{settings.serve.host}:{settings.serve.port}"


def deploy(settings: Settings, timeout_s: float = 180.0) -> dict[str, Any]:
    """Run the serving application of the production model; returns its /healthz body."""
    from ray import serve

    from serving.app import build_app

    config = production_config(settings)
    ray_access.connect(settings, log_to_driver=False)
    serve.start(http_options={"host": settings.serve.host, "port": settings.serve.port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
    return wait_healthy(settings, timeout_s)


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

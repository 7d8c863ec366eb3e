"""Serving as a part of the mini-cluster: `streamrec up` deploys it when a production model
exists (`streamrec up serve` insists), `status` probes it, `down` removes it first.

Registered in the ``streamrec.apps`` entry-point group (``infra.apps``).
"""

from __future__ import annotations

from infra.cluster import ComponentState
from infra.settings import Settings
from serving.deploy import base_url, deploy, health, undeploy
from serving.errors import ServeError
from serving.registry import served_version


class ServeApp:
    """The Ray Serve application of the production model."""

    name = "serve"

    def start(self, settings: Settings, required: bool) -> ComponentState | None:
        current = self.state(settings)
        if current is not None and current.healthy:
            return ComponentState(**{**current.__dict__, "detail": f"already running; {current.detail}"})
        if served_version(settings) is None:
            if required:
                raise ServeError(
                    f"{settings.mlflow.registered_model} has no {settings.serve.model_alias!r} version to serve: "
                    "train one (`streamrec train`) and promote it (`streamrec promote --version N`)"
                )
            return None
        return self._row(settings, deploy(settings))

    def state(self, settings: Settings) -> ComponentState | None:
        try:
            body = health(settings)
        except ServeError:
            return None
        return self._row(settings, body)

    def stop(self, settings: Settings) -> bool:
        return undeploy(settings)

    def _row(self, settings: Settings, body: dict) -> ComponentState:
        model = body.get("model") or {}
        ranking = body.get("ranking") or {}
        detail = f"{body.get('status')}: {model.get('name')} v{model.get('version')} ({model.get('index')})"
        if ranking:
            detail += f", {ranking.get('name')} v{ranking.get('version')}"
        healthy = body.get("status") in ("ok", "degraded")
        return ComponentState(self.name, "in-cluster", base_url(settings), healthy, detail, None, "")


SERVE_APP = ServeApp()

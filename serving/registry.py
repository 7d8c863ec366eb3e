"""The serving alias in the MLflow registry: which version serves, promote and rollback.

Serving follows the alias ``serve_model_alias`` (``production``) of a registered model.
``promote`` moves the alias to a version and appends it to the model's promotion history (a
registered-model tag), so ``rollback`` can move it back to the version that served before.
"""

from __future__ import annotations

import json

from mlflow.exceptions import MlflowException

from infra.errors import StreamrecError
from infra.settings import Settings
from training.common import tracking

HISTORY_TAG = "streamrec.promotions"  # JSON list of versions the alias pointed at, oldest first


class RegistryError(StreamrecError):
    """The registry has no such model, version or alias."""


def served_version(settings: Settings, model: str | None = None) -> str | None:
    """The version the serving alias names, or None when the alias is not set."""
    name = model or settings.mlflow.registered_model
    try:
        return str(tracking.client(settings).get_model_version_by_alias(name, settings.serve.model_alias).version)
    except MlflowException:
        return None


def promote(settings: Settings, version: str, model: str | None = None) -> str | None:
    """Point the serving alias at ``version``; returns the version it named before (or None)."""
    name = model or settings.mlflow.registered_model
    client = tracking.client(settings)
    try:
        client.get_model_version(name, version)
    except MlflowException as error:
        raise RegistryError(f"registered model {name!r} has no version {version!r}") from error
    before = served_version(settings, name)
    client.set_registered_model_alias(name, settings.serve.model_alias, version)
    history = _history(settings, name)
    if not history or history[-1] != version:
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps([*history, version][-50:]))
    return before


def rollback(settings: Settings, model: str | None = None) -> str:
    """Move the serving alias back to the version promoted before the current one; returns it."""
    name = model or settings.mlflow.registered_model
    history = _history(settings, name)
    current = served_version(settings, name)
    if current is None:
        raise RegistryError(f"{name!r} has no {settings.serve.model_alias!r} alias to roll back")
    while history and history[-1] == current:
        history.pop()
    if not history:
        raise RegistryError(f"{name!r} has no version promoted before {current} to roll back to")
    previous = history[-1]
    client = tracking.client(settings)
    client.set_registered_model_alias(name, settings.serve.model_alias, previous)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    return previous


def _history(settings: Settings, name: str) -> list[str]:
    try:
        model = tracking.client(settings).get_registered_model(name)
    except MlflowException as error:
        raise RegistryError(f"no registered model {name!r}; train one first (`streamrec train`)") from error
    return [str(version) for version in json.loads(model.tags.get(HISTORY_TAG, "[]"))]

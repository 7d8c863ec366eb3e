"""The serving alias in the MLflow registry: which version serves, promote and rollback.

Serving follows the alias ``serve_model_alias`` (``production``) of a registered model.
``promote`` moves the alias to a version and appends it to the model's promotion history (a
registered-model tag), so ``rollback`` can move it back to the version that served before.
"""

from __future__ import annotations

import json
import os

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, ErrorCode

from infra.errors import StreamrecError
from infra.settings import Settings
from training.common import tracking

HISTORY_TAG = "streamrec.promotions"  # JSON list of versions the alias pointed at, oldest first
REPLICA_RETRIES = 2  # fail_fast_in_this_process: retries after 1 and 2 s
# What MLflow answers for an alias that is not set (INVALID_PARAMETER_VALUE) or a model that does
# not exist (RESOURCE_DOES_NOT_EXIST); anything else (a refused connection, a 5xx) is the registry failing.
NOT_SET_CODES = {ErrorCode.Name(INVALID_PARAMETER_VALUE), ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)}


class RegistryError(StreamrecError):
    """The registry has no such model, version or alias."""


class RegistryUnreachable(RegistryError):
    """The registry did not answer (down, restarting, a 5xx): what the alias names is unknown."""


def served_version(settings: Settings, model: str | None = None) -> str | None:
    """The version the serving alias names, or None when the alias is not set; raises
    RegistryUnreachable when the registry does not answer (which is not "no alias")."""
    name = model or settings.mlflow.registered_model
    try:
        return str(tracking.client(settings).get_model_version_by_alias(name, settings.serve.model_alias).version)
    except MlflowException as error:
        if error.error_code in NOT_SET_CODES:
            return None
        raise RegistryUnreachable(
            f"cannot read the {settings.serve.model_alias!r} alias of {name!r} from the model registry at "
            f"{settings.mlflow.tracking_uri}: {error.message}"
        ) from error


def fail_fast_in_this_process() -> None:
    """Make this process's MLflow calls give up after about 3 s instead of MLflow's default
    ~4 minutes of retries: a serving replica's model watcher asks again every poll itself, and
    /healthz can say the registry is unreachable while that is still news."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(REPLICA_RETRIES)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"


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

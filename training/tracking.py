"""MLflow bookkeeping of training runs: the experiment, params, artifacts, the model registry."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from mlflow.artifacts import download_artifacts
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from infra.settings import Settings


def client(settings: Settings) -> MlflowClient:
    """A client of the configured tracking server (and its model registry)."""
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)


def start_run(settings: Settings, run_name: str, params: dict[str, str], tags: dict[str, str]) -> str:
    """Create a run in the ``mlflow_experiment`` experiment (created if missing); returns its id."""
    mlflow = client(settings)
    experiment = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(settings.mlflow_experiment)
    run = mlflow.create_run(experiment_id, run_name=run_name, tags=tags)
    items = sorted(params.items())
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        mlflow.log_batch(run.info.run_id, params=[Param(key, value) for key, value in items[start : start + 100]])
    return run.info.run_id


def log_metrics(settings: Settings, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Log ``metrics`` at ``step`` (an epoch) in one request."""
    stamp = int(time.time() * 1000)
    client(settings).log_batch(run_id, metrics=[Metric(key, float(value), stamp, step) for key, value in metrics.items()])


def set_tags(settings: Settings, run_id: str, tags: dict[str, str]) -> None:
    """Set ``tags`` on the run."""
    client(settings).log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])


def log_artifacts(settings: Settings, run_id: str, directory: Path, artifact_path: str | None = None) -> None:
    """Upload the files of ``directory`` under ``artifact_path`` of the run."""
    client(settings).log_artifacts(run_id, str(directory), artifact_path)


def register(settings: Settings, run_id: str, artifact_path: str, tags: dict[str, str]) -> str:
    """A new version of the ``registered_model`` from the run's ``artifact_path``; returns the version."""
    mlflow = client(settings)
    name = settings.registered_model
    if not mlflow.search_registered_models(filter_string=f"name = '{name}'"):
        mlflow.create_registered_model(name, description="Next-item retrieval models trained by `streamrec train`.")
    source = f"{mlflow.get_run(run_id).info.artifact_uri}/{artifact_path}"
    version = mlflow.create_model_version(name, source, run_id=run_id, tags=tags)
    return str(version.version)


def download_version(settings: Settings, version: str) -> Path:
    """Download the model directory of a registered version (``latest`` = newest) to a temp dir."""
    mlflow = client(settings)
    name = settings.registered_model
    if version == "latest":
        versions = mlflow.search_model_versions(filter_string=f"name = '{name}'")
        if not versions:
            raise LookupError(f"no versions of registered model {name!r} yet; run `streamrec train` first")
        version = str(max(int(v.version) for v in versions))
    try:
        source = mlflow.get_model_version(name, version).source
    except MlflowException as error:
        raise LookupError(f"registered model {name!r} has no version {version!r}") from error
    target = tempfile.mkdtemp(prefix=f"streamrec-model-v{version}-")
    local = download_artifacts(artifact_uri=source, dst_path=target, tracking_uri=settings.mlflow_tracking_uri)
    return Path(local)

"""MLflow bookkeeping of training runs: the experiment, params, artifacts, the model registry."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.artifacts import download_artifacts
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from infra.settings import Settings


def client(settings: Settings) -> MlflowClient:
    """A client of the configured tracking server (and its model registry)."""
    return MlflowClient(tracking_uri=settings.mlflow.tracking_uri, registry_uri=settings.mlflow.tracking_uri)


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # what the experiment holds, for MLflow's UI and API
MODEL_TRAINING_KIND = "custom_model_development"  # runs and metrics, not GenAI traces
# MLflow 3.17's UI picks its view from a GenAI / Model training toggle that ignores the tag above
# and defaults to GenAI (an experiment opened plainly shows an empty traces overview); a link
# with this query opens the runs table (with its Dataset column) or the run page.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def experiment_id(settings: Settings) -> str:
    """The ``mlflow_experiment`` experiment (created if missing), marked as model training."""
    mlflow = client(settings)
    experiment = mlflow.get_experiment_by_name(settings.mlflow.experiment)
    if experiment is None:
        identifier = mlflow.create_experiment(
            settings.mlflow.experiment, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
        )
    else:
        identifier = experiment.experiment_id
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # an experiment made by an older streamrec
            mlflow.set_experiment_tag(identifier, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return str(identifier)


def ui_url(settings: Settings, run_id: str | None = None) -> str:
    """The MLflow UI's page of the experiment's runs (or of ``run_id``), in the model-training view."""
    page = f"#/experiments/{experiment_id(settings)}" + (f"/runs/{run_id}" if run_id else "")
    return f"{settings.mlflow.tracking_uri.rstrip('/')}/{page}?{MODEL_TRAINING_VIEW}"


def start_run(
    settings: Settings, run_name: str, params: dict[str, str], tags: dict[str, str], feature_versions: dict[str, int]
) -> str:
    """Create a run in the ``mlflow_experiment`` experiment, with its params and the feature
    table versions it reads as dataset inputs; returns its id."""
    mlflow = client(settings)
    run = mlflow.create_run(experiment_id(settings), run_name=run_name, tags=tags)
    log_feature_inputs(settings, run.info.run_id, feature_versions)
    items = sorted(params.items())
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        mlflow.log_batch(run.info.run_id, params=[Param(key, value) for key, value in items[start : start + 100]])
    return run.info.run_id


def log_feature_inputs(settings: Settings, run_id: str, versions: dict[str, int]) -> None:
    """Log each feature table the run read as an MLflow dataset input: a Delta source (table
    path and version), so the runs table's Dataset column shows what data a model saw."""
    inputs = []
    for table, version in sorted(versions.items()):
        uri = settings.table_uri(table)
        # MLflow's DeltaDatasetSource JSON, written here because its to_json() leaves a
        # version 0 out (it tests the version for truth), which reads as "the latest".
        source = json.dumps({"path": uri, "delta_table_version": version})
        # MLflow keeps one dataset per (experiment, name, digest): the digest names the table's
        # place too, or a run on another lake would be shown the first lake's source.
        digest = hashlib.sha256(f"{uri}@{version}".encode()).hexdigest()[:16]
        dataset = Dataset(name=f"{table}@v{version}", digest=digest, source_type="delta", source=source)
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")]))
    client(settings).log_inputs(run_id, datasets=inputs)


def log_metrics(settings: Settings, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Log ``metrics`` at ``step`` (an epoch) in one request."""
    stamp = int(time.time() * 1000)
    client(settings).log_batch(
        run_id, metrics=[Metric(key, float(value), stamp, step) for key, value in metrics.items()]
    )


def set_tags(settings: Settings, run_id: str, tags: dict[str, str]) -> None:
    """Set ``tags`` on the run."""
    client(settings).log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])


def log_artifacts(settings: Settings, run_id: str, directory: Path, artifact_path: str | None = None) -> None:
    """Upload the files of ``directory`` under ``artifact_path`` of the run."""
    client(settings).log_artifacts(run_id, str(directory), artifact_path)


def register(settings: Settings, run_id: str, artifact_path: str, tags: dict[str, str]) -> str:
    """A new version of the ``registered_model`` from the run's ``artifact_path``; returns the version."""
    mlflow = client(settings)
    name = settings.mlflow.registered_model
    if not mlflow.search_registered_models(filter_string=f"name = '{name}'"):
        mlflow.create_registered_model(name, description="Next-item retrieval models trained by `streamrec train`.")
    source = f"{mlflow.get_run(run_id).info.artifact_uri}/{artifact_path}"
    version = mlflow.create_model_version(name, source, run_id=run_id, tags=tags)
    return str(version.version)


@contextmanager
def downloaded_version(settings: Settings, version: str, model: str | None = None) -> Iterator[Path]:
    """The model directory of a registered version (``latest`` = newest) of ``model`` (default
    ``settings.mlflow.registered_model``), downloaded to a temporary directory removed when the block ends."""
    mlflow = client(settings)
    name = model or settings.mlflow.registered_model
    if version == "latest":
        versions = mlflow.search_model_versions(filter_string=f"name = '{name}'")
        if not versions:
            raise LookupError(f"no versions of registered model {name!r} yet; run `streamrec train` first")
        version = str(max(int(v.version) for v in versions))
    try:
        source = mlflow.get_model_version(name, version).source
    except MlflowException as error:
        raise LookupError(f"registered model {name!r} has no version {version!r}") from error
    with tempfile.TemporaryDirectory(prefix=f"streamrec-model-v{version}-") as target:
        local = download_artifacts(artifact_uri=source, dst_path=target, tracking_uri=settings.mlflow.tracking_uri)
        yield Path(local)

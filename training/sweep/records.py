"""A sweep in MLflow: one parent run (the spec, the pinned feature versions, the fits and the
plots) and one child run per trial (an ordinary training run tagged with its parent and key).

The parent run is the sweep's whole state: ``spec.json`` (the spec and the feature versions)
says what to run, and a child tagged ``streamrec.sweep.done`` is a trial that finished, its
sweep metrics included. Resuming a sweep reads both, so nothing runs twice.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Run

from features.reader import FeatureVersions
from infra.settings import Settings
from training.common import tracking
from training.sweep.spec import SweepError, SweepSpec, Trial, parse_spec

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a child under its parent
SWEEP_TAG = "streamrec.sweep"  # "parent" on the sweep's run
TRIAL_TAG = "streamrec.sweep.trial"  # a child's trial key
LABEL_TAG = "streamrec.sweep.label"
DONE_TAG = "streamrec.sweep.done"  # set on a child when everything of its trial is logged
SPEC_ARTIFACT = "spec.json"


def start_parent(settings: Settings, spec: SweepSpec, versions: FeatureVersions, trials: list[Trial]) -> str:
    """The sweep's MLflow parent run with the spec as params and ``spec.json``; returns its id."""
    name = spec.name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    params = {
        "trials": str(len(trials)),
        "workers": str(spec.workers),
        "protocol": spec.protocol,
        "train": json.dumps(spec.train, sort_keys=True),
        **({"points": "explicit list"} if spec.trials is not None else {}),
        **{f"grid.{axis}": ",".join(map(str, getattr(spec, axis))) for axis in _grid_axes(spec)},
        **{f"version.{table}": str(version) for table, version in versions.as_dict().items()},
    }
    run_id = tracking.start_run(
        settings, name, params=params, tags={SWEEP_TAG: "parent"}, feature_versions=versions.as_dict()
    )
    with tempfile.TemporaryDirectory(prefix="streamrec-sweep-") as scratch:
        document = {"spec": spec.model_dump(mode="json", exclude_unset=True), "versions": versions.as_dict()}
        (Path(scratch) / SPEC_ARTIFACT).write_text(json.dumps(document, indent=2))
        tracking.log_artifacts(settings, run_id, Path(scratch))
    return run_id


def _grid_axes(spec: SweepSpec) -> list[str]:
    if spec.trials is not None:
        return []
    return ["encoders", "dims", "blocks", "max_lens", "data_fractions", "seeds"]


def read_parent(settings: Settings, run_id: str) -> tuple[SweepSpec, FeatureVersions]:
    """The spec and pinned feature versions of the sweep whose parent run is ``run_id``."""
    client = tracking.client(settings)
    try:
        run = client.get_run(run_id)
    except Exception as error:  # MlflowException (no such run) or a malformed id
        raise SweepError(f"no MLflow run {run_id!r} at {settings.mlflow.tracking_uri}") from error
    if run.data.tags.get(SWEEP_TAG) != "parent":
        raise SweepError(f"MLflow run {run_id} is not a sweep's parent run (it has no {SWEEP_TAG}=parent tag)")
    with tempfile.TemporaryDirectory(prefix="streamrec-sweep-") as scratch:
        path = client.download_artifacts(run_id, SPEC_ARTIFACT, scratch)
        document = json.loads(Path(path).read_text())
    return parse_spec(document["spec"]), FeatureVersions.from_dict(document["versions"])


def child_runs(settings: Settings, parent_id: str) -> list[Run]:
    """Every child run of the sweep, oldest first."""
    client = tracking.client(settings)
    experiment = client.get_run(parent_id).info.experiment_id
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=500, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return sorted(runs, key=lambda run: run.info.start_time or 0)


def finished_keys(children: list[Run]) -> set[str]:
    """The trial keys of the children that finished (tagged done)."""
    return {run.data.tags[TRIAL_TAG] for run in children if run.data.tags.get(DONE_TAG) == "true"}


def close_abandoned(settings: Settings, children: list[Run]) -> int:
    """End the children a stopped sweep left RUNNING without finishing (as KILLED); returns how many."""
    client = tracking.client(settings)
    abandoned = [run for run in children if run.info.status == "RUNNING" and run.data.tags.get(DONE_TAG) != "true"]
    for run in abandoned:
        client.set_terminated(run.info.run_id, "KILLED")
    return len(abandoned)


def trial_tags(parent_id: str, trial: Trial) -> dict[str, str]:
    """The tags of a trial's child run."""
    return {PARENT_TAG: parent_id, TRIAL_TAG: trial.key, LABEL_TAG: trial.label}


def finish_trial(settings: Settings, run_id: str, trial: Trial, metrics: dict[str, float]) -> None:
    """Log a trial's sweep metrics, name its run after the trial and mark it done."""
    tracking.log_metrics(settings, run_id, metrics, step=0)
    tracking.client(settings).update_run(run_id, name=trial.label)
    tracking.set_tags(settings, run_id, {DONE_TAG: "true"})


def trial_rows(children: list[Run]) -> list[dict[str, Any]]:
    """One row per finished trial: its label, key, encoder, point and every metric."""
    rows = []
    for run in children:
        tags, params = run.data.tags, run.data.params
        if tags.get(DONE_TAG) != "true":
            continue
        rows.append(
            {
                "label": tags.get(LABEL_TAG, run.info.run_name),
                "key": tags[TRIAL_TAG],
                "run_id": run.info.run_id,
                "encoder": params.get("encoder.kind", ""),
                "dim": int(params.get("encoder.dim", 0)),
                "blocks": int(params.get("encoder.num_blocks", 0)),
                "max_len": int(params.get("encoder.max_len", 0)),
                "data_fraction": float(params.get("data_fraction", 1.0)),
                "seed": int(params.get("seed", 0)),
                **run.data.metrics,
            }
        )
    return rows

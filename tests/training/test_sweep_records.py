"""A sweep in MLflow, on a local SQLite tracking store: one parent run with the spec, the fits
and the plots, one child run per trial, and a stopped sweep resumed without redoing a trial.

Trials here are stand-ins that log what a trial's run logs (Ray Tune and Ray Train are the
integration test's, tests/training/test_sweep_ray.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from features.reader import FeatureVersions
from infra.settings import Settings, get_settings
from training.common import tracking
from training.sweep import records, runner
from training.sweep.data import DataStats
from training.sweep.plan import PlannedTrial, SweepPlan
from training.sweep.plots import PLOTS
from training.sweep.sizing import ModelSize
from training.sweep.spec import SweepError, parse_spec

VERSIONS = FeatureVersions(item_vocab=3, user_sequences=4)
SPEC = {"name": "records-test", "dims": [8, 16, 32, 64], "blocks": [1, 2], "max_lens": [20],
        "data_fractions": [0.5, 1.0], "train": {"epochs": 2}}  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings whose MLflow is a SQLite file with the experiment's artifacts in the same folder."""
    home = tmp_path_factory.mktemp("sweep-records")
    settings = get_settings(home=home, mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
                            mlflow_experiment="sweep-records")  # fmt: skip
    MlflowClient(settings.mlflow.tracking_uri).create_experiment(
        settings.mlflow.experiment, artifact_location=str(home / "artifacts")
    )
    yield settings


def _plan() -> SweepPlan:
    spec = parse_spec(SPEC)
    planned = []
    for trial in spec.trials_to_run():
        n = trial.config.encoder.dim**2 * 12 * trial.config.encoder.num_blocks
        tokens = int(200_000 * trial.config.data_fraction)
        planned.append(PlannedTrial(trial, DataStats(100, tokens, 20.0, 0.7), ModelSize(n, 1000 * n), 1))
    return SweepPlan(spec, VERSIONS, 1_000, planned, concurrency=2)


def _fake_tune(ran: list[str], stop_after: int | None = None) -> Any:
    """A stand-in of ``run_on_tune`` running trials one by one: each logs a child run as
    ``run_trial`` does (metrics following known laws); after ``stop_after`` trials the next one
    is left running and the sweep stops (KeyboardInterrupt)."""

    def run(settings: Settings, plan: SweepPlan, parent: str, pending: list[PlannedTrial], log: Any) -> list[str]:
        for index, planned in enumerate(pending):
            trial = planned.trial
            run_id = tracking.start_run(settings, f"run-{trial.key}", trial.config.flat_params(),
                                        records.trial_tags(parent, trial), VERSIONS.as_dict())  # fmt: skip
            if stop_after is not None and index == stop_after:
                raise KeyboardInterrupt
            n, d = planned.size.non_embedding / 1e6, planned.data.tokens / 1e6
            metrics = {
                "non_embedding_params": float(planned.size.non_embedding),
                "train_tokens": float(planned.data.tokens),
                "data_apen": 0.7,
                "train_flops": 6e9 * n * d * 1e6,
                "epochs_run": 2.0,
                "val_cross_entropy": 2.0 + 0.5 * n**-0.3 + 0.4 * d**-0.4,
                "best_val_ndcg_10": 0.05 * (6e-6 * n * d * 1e6) ** 0.1,
                "best_val_hr_10": 0.4 - 0.02 * n**-0.3 - 0.05 * (0.7 * d) ** -0.5,
                "best_val_all_ndcg_10": 0.06,
                "test_ndcg_10": 0.04,
            }
            tracking.client(settings).set_terminated(run_id, "FINISHED")
            records.finish_trial(settings, run_id, trial, metrics)
            ran.append(trial.key)
        return []

    return run


def test_a_stopped_sweep_resumes_without_redoing_finished_trials(
    store: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plan = _plan()
    ran: list[str] = []
    monkeypatch.setattr(runner, "run_on_tune", _fake_tune(ran, stop_after=5))
    with pytest.raises(KeyboardInterrupt):
        runner.run_sweep(store, runner.PreparedSweep(plan, None, set()), log=lambda line: None)
    parent = (
        tracking.client(store)
        .search_runs([tracking.experiment_id(store)], filter_string=f"tags.`{records.SWEEP_TAG}` = 'parent'")[0]
        .info.run_id
    )
    assert len(ran) == 5
    children = records.child_runs(store, parent)
    assert records.finished_keys(children) == set(ran)
    assert [run.info.status for run in children].count("RUNNING") == 1  # the trial the stop cut short

    # What `streamrec sweep --resume PARENT` reads back from MLflow: the same spec and versions.
    spec, versions = records.read_parent(store, parent)
    assert spec == plan.spec and versions == VERSIONS
    monkeypatch.setattr(runner, "run_on_tune", _fake_tune(ran))
    lines: list[str] = []
    outcome = runner.run_sweep(
        store, runner.PreparedSweep(plan, parent, records.finished_keys(children)), plots_dir=tmp_path, log=lines.append
    )
    assert sorted(ran) == sorted(planned.trial.key for planned in plan.trials)  # each trial trained exactly once
    assert "1 trial run(s) a stopped sweep left running marked KILLED; they run again" in lines
    assert len(outcome.rows) == len(plan.trials) == 16 and not outcome.failed
    statuses = sorted(run.info.status for run in records.child_runs(store, parent))
    assert statuses == ["FINISHED"] * 16 + ["KILLED"]
    assert sorted(path.name for path in outcome.plots) == sorted(PLOTS)

    # The parent run: FINISHED, the spec, the fits (metrics and fits.json), the plots and the trial table.
    client = tracking.client(store)
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.info.run_name == "records-test"
    assert run.data.params["grid.dims"] == "8,16,32,64" and run.data.params["version.features/user_sequences"] == "4"
    assert run.data.metrics["trials_finished"] == 16
    assert run.data.metrics["fit.hstu.loss.alpha"] == pytest.approx(0.3, abs=0.02)
    assert run.data.metrics["fit.hstu.loss.alpha_low"] <= 0.3 <= run.data.metrics["fit.hstu.loss.alpha_high"]
    assert "fit.hstu.loss.held_out_error" in run.data.metrics
    artifacts = {item.path for item in client.list_artifacts(parent)} | {
        item.path for item in client.list_artifacts(parent, "plots")
    }
    assert {"spec.json", "fits.json", "trials.json", *(f"plots/{name}" for name in PLOTS)} <= artifacts

    # A child: the trial's label as its name, nested under the parent, its sweep metrics.
    child = next(c for c in records.child_runs(store, parent) if c.data.tags.get(records.DONE_TAG) == "true")
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.info.run_name == child.data.tags[records.LABEL_TAG] and child.info.run_name.startswith("hstu d")
    assert {"non_embedding_params", "train_flops", "val_cross_entropy", "best_val_ndcg_10"} <= set(child.data.metrics)

    # `--report`: the same trials and fits again, from MLflow alone; the parent is left as it was.
    report = runner.report_sweep(store, parent)
    assert [row["key"] for row in report.rows] == [row["key"] for row in outcome.rows]
    assert report.fits["hstu"][0].value("alpha") == pytest.approx(outcome.fits["hstu"][0].value("alpha"))
    assert client.get_run(parent).info.end_time == run.info.end_time


def test_report_and_resume_refuse_a_run_that_is_not_a_sweep(store: Settings) -> None:
    plain = tracking.start_run(store, "not-a-sweep", {}, {}, {})
    with pytest.raises(SweepError, match="is not a sweep's parent run"):
        runner.report_sweep(store, plain)
    with pytest.raises(SweepError, match="no MLflow run 'nope'"):
        records.read_parent(store, "nope")

"""A real two-trial sweep on the session's Ray head and MLflow server: Ray Tune trials that are
ordinary training runs under one parent run, and a resume that runs nothing again."""

from __future__ import annotations

from pathlib import Path

from infra.settings import Settings
from training.common import tracking
from training.sweep import records
from training.sweep.plots import PLOTS
from training.sweep.runner import prepare_sweep, run_sweep
from training.sweep.spec import parse_spec


def test_a_two_trial_sweep_runs_on_tune_logs_children_and_resumes_without_rerunning(
    settings: Settings, tmp_path: Path
) -> None:
    spec = parse_spec({"name": "sweep-integration", "dims": [8], "blocks": [1], "max_lens": [20],
                       "data_fractions": [0.5, 1.0], "train": {"epochs": 1, "batch_size": 64}})  # fmt: skip
    client = tracking.client(settings)
    versions_before = client.search_model_versions(f"name = '{settings.mlflow.registered_model}'")
    lines: list[str] = []
    outcome = run_sweep(settings, prepare_sweep(settings, spec), plots_dir=tmp_path, log=lines.append)

    assert not outcome.failed and len(outcome.rows) == 2
    half, whole = sorted(outcome.rows, key=lambda row: row["data_fraction"])
    assert half["data_fraction"] == 0.5 and 0 < half["train_tokens"] < whole["train_tokens"]
    for row in outcome.rows:
        assert row["tokens_seen"] == row["train_tokens"] * row["epochs_run"]
        assert row["val_cross_entropy"] > 0 and row["train_flops"] > 0 and row["non_embedding_params"] > 0
        assert {"best_val_ndcg_10", "best_val_all_ndcg_10", "test_ndcg_10", "test_all_ndcg_10"} <= set(row)
    assert any(line.startswith("trial hstu d8 b1 L20 f0.5") for line in lines)  # Tune's progress, per trial
    assert sorted(path.name for path in outcome.plots) == sorted(PLOTS)
    children = records.child_runs(settings, outcome.parent_run_id)
    assert sorted(child.info.run_name for child in children) == ["hstu d8 b1 L20 f0.5", "hstu d8 b1 L20 f1"]
    assert {child.info.status for child in children} == {"FINISHED"}
    # Trials are not registered: the registry is as it was.
    assert len(client.search_model_versions(f"name = '{settings.mlflow.registered_model}'")) == len(versions_before)

    resumed = prepare_sweep(settings, resume=outcome.parent_run_id)
    assert resumed.done == {row["key"] for row in outcome.rows}
    lines.clear()
    again = run_sweep(settings, resumed, log=lines.append)
    assert any("2 trials (2 already finished)" in line for line in lines)
    assert not any(line.startswith("trial ") for line in lines)  # nothing ran again
    assert [row["run_id"] for row in again.rows] == [row["run_id"] for row in outcome.rows]
    assert len(records.child_runs(settings, outcome.parent_run_id)) == 2

"""`streamrec evaluate --window-start --window` on the trained pipeline's registered version: the
CLI and the code give the same window metrics, they reach the version's MLflow run, and an
empty window or a bad one exits 1 with the reason."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from infra.settings import Settings
from training.common import tracking
from training.retrieval.runner import TrainOutcome
from training.retrieval.version_eval import evaluate_version_window

DAY_MS = 86_400_000


def test_window_evaluation_from_the_cli_and_from_code(settings: Settings, hstu_run: TrainOutcome) -> None:
    env = {
        **os.environ,
        "STREAMREC_HOME": str(settings.home),
        "STREAMREC_REGISTERED_MODEL": settings.mlflow.registered_model,
    }
    cli = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "streamrec")
    version = hstu_run.model_version
    evaluated = subprocess.run(
        [cli, "evaluate", version, "--window-start", "latest", "--window", "2d", "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    shown = json.loads(evaluated.stdout.strip().splitlines()[-1])
    result, _ = evaluate_version_window(settings, version, None, 2 * DAY_MS)
    assert shown["window"] == {"start_ms": result.window.start_ms, "length_ms": 2 * DAY_MS}
    assert result.targets > 100
    for key in ("window_ndcg_10", "window_hr_50", "window_all_mrr", "window_unknown_target_share"):
        assert shown["metrics"][key] == pytest.approx(result.metrics[key], abs=1e-9)
    assert result.metrics["window_unknown_target_share"] == 0  # a static catalogue: every item is known
    assert result.metrics["window_hr_10"] > 0.05  # it has learned the stream's structure
    logged = tracking.client(settings).get_metric_history(hstu_run.run_id, "window_ndcg_10")
    assert [m.step for m in logged] == [result.window.end_ms // 1000]

    after = str(result.window.end_ms + DAY_MS)
    for arguments, reason in (
        (["--window-start", after, "--window", "1h"], "nothing to evaluate"),
        (["--window-start", "0", "--window", "1h"], "before the first event"),
        (["--window-start", "latest", "--window", "0"], "longer than 0"),
        (["--window-start", "latest"], "go together"),
    ):
        failed = subprocess.run([cli, "evaluate", version, *arguments], env=env, capture_output=True, text=True)
        assert failed.returncode in (1, 2), arguments
        assert reason in " ".join(failed.stdout.split()), (arguments, failed.stdout)

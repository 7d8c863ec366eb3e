"""`streamrec evaluate --window-start --window` on the trained pipeline's registered version: the
CLI and the code give the same window metrics, they reach the version's MLflow run, and an
empty window or a bad one exits 1 with the reason.

The command runs in-process (the training CLI's Typer app, as tests/training/test_train_cli.py
does): each `streamrec evaluate` subprocess imported torch, TorchRec and MLflow again (~5 s of
CPU) before it evaluated; the console script itself runs in test_train_ray.py's `streamrec evaluate`."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from infra.settings import Settings
from training.cli import register
from training.common import tracking
from training.retrieval.runner import TrainOutcome
from training.retrieval.version_eval import evaluate_version_window

DAY_MS = 86_400_000


def test_window_evaluation_from_the_cli_and_from_code(settings: Settings, hstu_run: TrainOutcome) -> None:
    app = typer.Typer()
    register(app)
    env = {
        "STREAMREC_HOME": str(settings.home),
        "STREAMREC_REGISTERED_MODEL": settings.mlflow.registered_model,
        "COLUMNS": "200",
    }

    def cli(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["evaluate", version, *args], env=env)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        return result.exit_code, result.stdout

    version = hstu_run.model_version
    code, output = cli("--window-start", "latest", "--window", "2d", "--json")
    assert code == 0, output
    shown = json.loads(output.strip().splitlines()[-1])
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
        code, output = cli(*arguments)
        assert code in (1, 2), arguments
        assert reason in " ".join(output.split()), (arguments, output)

"""StepRunner's Ray-job feature build reads the JSON outcome `streamrec features build --json` prints."""

from __future__ import annotations

import json
from typing import Any

import dagster as dg
import pytest

from infra.settings import Settings, get_settings
from workflows.ray_jobs import RayJobResult
from workflows.resources import StepRunner

SUMMARY = {
    "mode": "incremental",
    "silver_version": 3,
    "new_silver_rows": 12,
    "rows_written": {"features/item_vocab": 2, "features/user_sequences": 5, "features/item_stats": 4},
    "versions": {"silver/events": 3, "features/item_vocab": 4, "features/user_sequences": 4, "features/item_stats": 4},
}


def _run_with_logs(monkeypatch: pytest.MonkeyPatch, tmp_path, logs: str) -> tuple[Any, list[list[str]]]:  # noqa: ANN001
    calls: list[list[str]] = []

    def fake_ray_job(self: StepRunner, settings: Settings, args: list[str], step: str, log: Any) -> RayJobResult:
        calls.append(args)
        return RayJobResult("raysubmit_1", "SUCCEEDED", logs, 4.2)

    monkeypatch.setattr(StepRunner, "_ray_job", fake_ray_job)
    runner = StepRunner(mode="ray_job")
    return runner.build_features(get_settings(home=tmp_path), log=lambda line: None), calls


def test_the_outcome_is_the_json_line_among_progress_lines(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    logs = "   0.1s read silver/events version 3\n   2.0s features/item_vocab: 2 rows appended\n"
    outcome, calls = _run_with_logs(monkeypatch, tmp_path, logs + json.dumps(SUMMARY) + "\n")
    assert calls == [["features", "build", "--incremental", "--json"]]
    assert outcome.summary == SUMMARY
    assert outcome.ray_job_id == "raysubmit_1" and outcome.seconds == 4.2


def test_output_without_the_json_outcome_fails_the_step_clearly(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    logs = "features build (full) from silver/events version 3:\n{not json\n"
    with pytest.raises(dg.Failure, match=r"`streamrec features build --incremental --json` \(Ray job raysubmit_1\)"
                       r" printed no JSON outcome") as failure:  # fmt: skip
        _run_with_logs(monkeypatch, tmp_path, logs)
    assert "{not json" in failure.value.metadata["log_tail"].value

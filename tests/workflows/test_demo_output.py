"""What the demo prints about its warm-start round and at its close, with the Dagster runs of the
round and of its gate, the producer and ingestion replaced (no service)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster as dg
import pytest

from features import reader
from features.reader import FeatureVersions
from infra.cli import ray_dashboard_line
from infra.dagster_automation import DagsterApiError
from infra.dagster_runs import RunEnd
from infra.settings import Settings
from ingestion import day_feed
from serving.deploy import base_url
from training.common import tracking
from workflows import demo, promotion
from workflows.promotion import Comparison
from workflows.resources import StreamrecResource, streamrec_resource_config
from workflows.sensors import registered_model_sensor

REASON = "ndcg_10 0.0936 vs production v2 0.0934: not above the threshold 0.0943"


class FakeClient:
    """The demo's steady /recommend client, asking nothing."""

    waited_for: list[str] = []

    def __init__(self, settings: Settings, user: str) -> None:
        self.sent = self.failed = 0
        self.versions = ["2"]

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def wait_for_version(self, version: str, timeout_s: float) -> None:
        self.waited_for.append(version)


class FakeDagster:
    """Launches and follows runs (``infra.dagster_runs``), recording what it was given; the gate's
    run materialised ``recorded`` (asset key: metadata)."""

    def __init__(self, status: str = "SUCCESS", recorded: dict[str, dict[str, Any]] | None = None) -> None:
        self.status, self.recorded = status, recorded or {}
        self.launched: list[tuple[str, dict[str, Any], Any]] = []

    def launch_run(self, settings: Settings, job: str, run_config: dict[str, Any], tags: Any = None) -> str:
        self.launched.append((job, run_config, tags))
        return f"run-{len(self.launched)}"

    def wait_for_run(self, settings: Settings, run_id: str, timeout_s: float, on_change: Any) -> RunEnd:
        for status in ("STARTED", self.status):
            on_change(status)
        failed = {} if self.status == "SUCCESS" else {"retrieval_model": "FAILURE"}
        return RunEnd(run_id, self.status, failed)

    def run_materializations(self, settings: Settings, run_id: str) -> dict[str, dict[str, Any]]:
        assert self.launched[int(run_id.removeprefix("run-")) - 1][0] == "promotion_job", "only the gate's is read"
        return self.recorded


def _fake_round(monkeypatch: pytest.MonkeyPatch, dagster: FakeDagster) -> list[int]:
    """Replace the round's services (the candidate v3 waits, at user_sequences version 7); the
    counts of events each produce call sent."""
    sent: list[int] = []

    def produce(events: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(len(list(events)))
        return SimpleNamespace(sent=sent[-1], failed=0)

    monkeypatch.setattr(demo, "launch_run", dagster.launch_run)
    monkeypatch.setattr(demo, "wait_for_run", dagster.wait_for_run)
    monkeypatch.setattr(demo, "run_materializations", dagster.run_materializations)
    monkeypatch.setattr(demo, "pending_candidate", lambda settings: "3")
    monkeypatch.setattr(promotion, "pending_candidate", lambda settings: "3")  # what the sensor's request reads
    monkeypatch.setattr(promotion, "registered_versions", lambda settings, model=None: [1, 2, 3])
    monkeypatch.setattr(reader, "latest_versions", lambda settings: FeatureVersions(item_vocab=1, user_sequences=7))
    monkeypatch.setattr(day_feed, "produce", produce)
    monkeypatch.setattr(day_feed, "run_ingest", lambda *args, **kwargs: None)
    monkeypatch.setattr(demo, "build_features", lambda *args, **kwargs: SimpleNamespace(versions=lambda: {}))
    monkeypatch.setattr(demo, "_SteadyClient", FakeClient)
    FakeClient.waited_for = []
    return sent


def _recorded_gate(promote: bool, production_before: str = "1", notes: str = "") -> dict[str, dict[str, Any]]:
    """What a promotion_job run materialises (the metadata the assets write, as the run reads it back)."""
    window = {"start_ms": 1, "length_ms": 86_400_000, "targets": 812}
    comparison = Comparison(
        model="m",
        candidate_version="3",
        candidate_run_id="r3",
        feature_versions={"item_vocab": 1, "user_sequences": 6},
        candidate_metrics={"window_ndcg_10": 0.0934, "window_new_ndcg_10": 0.0521, "window_unknown_target_share": 0.0},
        production_version="1",
        production_metrics={"window_ndcg_10": 0.0811, "window_unknown_target_share": 0.0412},
        window=window,
    )
    decision = {
        "decision": "promoted" if promote else "refused",
        "promoted": promote,
        "reason": REASON,
        "candidate_version": "3",
        "production_before": production_before,
        "production_after": "3" if promote else production_before,
        "window": window,
    }
    if notes:
        decision["notes"] = notes
    return {
        "retrieval_evaluation": {"candidate_version": "3", "comparison": json.loads(comparison.to_json())},
        "retrieval_promotion": decision,
    }


@pytest.mark.parametrize("promote", [False, True])
def test_the_round_and_its_gate_run_in_dagster_and_the_gate_is_printed_once_from_its_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, promote: bool
) -> None:
    label = "promoted" if promote else "refused"
    dagster = FakeDagster(recorded=_recorded_gate(promote))
    sent = _fake_round(monkeypatch, dagster)
    settings = Settings(home=tmp_path, topic="demo-topic")
    demo._warm_start_round(settings, demo.DemoOptions(events=2_800, epochs=7, workers=2), "u1")
    output = capsys.readouterr().out
    printed = " ".join(output.split())
    # A run of loop_job, then one of promotion_job, both on the demo's own settings.
    [(job, run_config, _), (gate_job, gate_config, gate_tags)] = dagster.launched
    assert job == "loop_job" and run_config["resources"]["streamrec"]["config"]["topic"] == "demo-topic"
    model_config = run_config["ops"]["retrieval_model"]["config"]
    assert model_config["train"]["epochs"] == demo.WARM_START_TRAIN["epochs"] and model_config["workers"] == 2
    assert gate_job == "promotion_job" and gate_config["resources"] == run_config["resources"]
    assert gate_config["ops"] == {"retrieval_evaluation": {"config": {"candidate_version": "3"}}}
    assert gate_tags == {"streamrec/candidate_version": "3", "streamrec/pending_at_user_sequences": "7"}
    assert f"Dagster run of loop_job: {settings.dagster.url}/runs/run-1" in printed
    assert f"Dagster run of promotion_job: {settings.dagster.url}/runs/run-2" in printed
    assert printed.count("run SUCCESS") == 2 and "registered candidate v3" in printed
    # The decision the run recorded, printed once; the demo gates nothing itself.
    assert printed.count(REASON) == 1 and f"gate (pending v3): {label}: {REASON}" in printed
    assert FakeClient.waited_for == (["3"] if promote else [])
    assert len(sent) == 2 and all(20 < count < 400 for count in sent)  # two days of about 2,800 / 28 events (sessions)
    assert "812 target events neither model trained on" in printed
    rows = [line.replace("│", " ").split() for line in output.splitlines() if "│" in line]
    assert ["frozen", "(production)", "v1", "0.0811", "-", "-", "0.0412"] in rows
    assert ["updated", "(warm", "start)", "v3", "0.0934", "-", "0.0521", "0.0000"] in rows


def test_the_gate_run_is_the_one_the_registered_model_sensor_requests(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The demo launches promotion_job with the run config and tags of the sensor's request for the
    waiting candidate (one implementation), plus the resources that point it at the demo's settings."""
    dagster = FakeDagster(recorded=_recorded_gate(True))
    _fake_round(monkeypatch, dagster)
    settings = Settings(home=tmp_path, topic="demo-topic", registered_model="m")
    demo._gate_in_dagster(settings)
    context = dg.build_sensor_context(cursor="3", resources={"streamrec": StreamrecResource.from_settings(settings)})
    result = registered_model_sensor(context)
    assert isinstance(result, dg.SensorResult)
    (request,) = result.run_requests or []
    [(job, run_config, tags)] = dagster.launched
    assert job == registered_model_sensor.job_name == "promotion_job"
    assert {**request.run_config, "resources": streamrec_resource_config(settings)} == run_config
    assert tags == request.tags


def test_a_gate_that_compared_again_prints_why_and_no_stale_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Production moved between the run's evaluation and its decision: the gate compared again
    (``promotion.settle``), so the evaluation's comparison is not the one judged: no table of it."""
    note = "production moved from 1 to 2 since the evaluation: compared again"
    _fake_round(monkeypatch, FakeDagster(recorded=_recorded_gate(False, production_before="2", notes=note)))
    demo._warm_start_round(Settings(home=tmp_path), demo.DemoOptions(events=2_800), "u1")
    printed = " ".join(capsys.readouterr().out.split())
    assert f"gate (pending v3): refused: {REASON} ({note})" in printed
    assert "target events neither model trained on" not in printed


def test_a_failed_round_run_stops_the_demo_naming_the_step_and_the_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dagster = FakeDagster("FAILURE")
    _fake_round(monkeypatch, dagster)
    match = r"run of loop_job ended FAILURE \(retrieval_model FAILURE\): http\S+/runs/run-1"
    with pytest.raises(DagsterApiError, match=match):
        demo._warm_start_round(Settings(home=tmp_path), demo.DemoOptions(events=2_800), "u1")
    assert [job for job, _, _ in dagster.launched] == ["loop_job"]  # no gate after a failed round


def test_the_demo_stream_drifts_and_its_days_follow_each_other(tmp_path: Path) -> None:
    """Stage 2 sends the first STREAM_DAYS days, the round the next day, then the day after:
    every event once, in time order, none in the future (the ingest would quarantine it)."""
    from ingestion.synthetic import DAY_MS, events_between_days, generate_events

    stream = demo._stream(Settings(home=tmp_path), demo.DemoOptions(events=3_000, users=50, items=200))
    assert not stream.static_catalogue and stream.start_ms is not None
    first, day1, day2 = (
        list(events_between_days(stream, None, demo.STREAM_DAYS)),
        list(events_between_days(stream, demo.STREAM_DAYS, demo.STREAM_DAYS + 1)),
        list(events_between_days(stream, demo.STREAM_DAYS + 1, demo.STREAM_DAYS + 2)),
    )
    end = stream.start_ms + (demo.STREAM_DAYS + 2) * DAY_MS  # sessions started last may run on past it
    every = [event["event_id"] for event in generate_events(stream) if event["ts"] <= end]
    assert [event["event_id"] for event in first + day1 + day2] == every
    assert 2_700 < len(first) < 3_300 and day1 and day2
    assert first[-1]["ts"] <= stream.start_ms + demo.STREAM_DAYS * DAY_MS < day1[0]["ts"]
    assert day2[-1]["ts"] < time.time() * 1000


@pytest.mark.parametrize("auth", ["token", "disabled"])
def test_the_closing_lines_say_how_to_sign_in_to_the_ray_dashboard(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, auth: Any
) -> None:
    home = tmp_path / ("a-long-home-path-" * 6)  # lines longer than a log's 80 columns stay whole
    settings = Settings(home=home, ray_auth=auth, ray_auth_token_file="")
    monkeypatch.setattr(tracking, "ui_url", lambda settings: "http://mlflow.test/#/experiments/1")
    demo._closing_lines(settings, started=0.0)
    printed = capsys.readouterr().out.splitlines()
    line = ray_dashboard_line(settings)  # what `streamrec up` prints
    assert line in printed
    assert f"serving API: {base_url(settings)}/docs   lake: {settings.lake_root}" in printed
    assert line.startswith(f"Ray dashboard: {settings.ray.dashboard_url}")
    if auth == "token":
        assert f"(sign in with the token in {home / 'ray' / 'auth_token'})" in line
    else:
        assert "sign in" not in line


def test_a_rerun_of_the_demo_sends_the_same_event_ids(tmp_path: Path) -> None:
    """The synthetic clock is pinned per seed in the demo's home at its first run, so a rerun
    (after the local broker lost its topic) sends the very same events and silver keeps one copy."""
    from ingestion.synthetic import generate_events

    settings = Settings(home=tmp_path)

    def event_ids(seed: int) -> list[str]:
        config = demo._stream(settings, demo.DemoOptions(events=50, users=5, items=20, seed=seed))
        return [event["event_id"] for event in generate_events(config)]

    first = event_ids(0)
    assert event_ids(0) == first  # the rerun
    assert set(event_ids(1)).isdisjoint(first)  # another seed, other events
    assert (tmp_path / "demo" / "synthetic-clock.json").is_file()

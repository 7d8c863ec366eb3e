"""What the demo prints about its warm-start round and at its close, with the round's Dagster run,
gate, producer and ingestion replaced (no service)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from infra.cli import ray_dashboard_line
from infra.dagster_automation import DagsterApiError
from infra.dagster_runs import RunEnd
from infra.settings import Settings
from ingestion import day_feed
from serving.deploy import base_url
from training.common import tracking
from workflows import demo
from workflows.promotion import Decision

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
    """Launches and follows the round's run (``infra.dagster_runs``), recording what it was given."""

    def __init__(self, status: str = "SUCCESS") -> None:
        self.status = status
        self.launched: list[tuple[str, dict[str, Any]]] = []

    def launch_run(self, settings: Settings, job: str, run_config: dict[str, Any]) -> str:
        self.launched.append((job, run_config))
        return "run-1"

    def wait_for_run(self, settings: Settings, run_id: str, timeout_s: float, on_change: Any) -> RunEnd:
        for status in ("STARTED", self.status):
            on_change(status)
        failed = {} if self.status == "SUCCESS" else {"retrieval_model": "FAILURE"}
        return RunEnd(run_id, self.status, failed)


def _fake_round(monkeypatch: pytest.MonkeyPatch, dagster: FakeDagster, pending: Any) -> list[int]:
    """Replace the round's services; the counts of events each produce call sent."""
    sent: list[int] = []

    def produce(events: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(len(list(events)))
        return SimpleNamespace(sent=sent[-1], failed=0)

    monkeypatch.setattr(demo, "launch_run", dagster.launch_run)
    monkeypatch.setattr(demo, "wait_for_run", dagster.wait_for_run)
    monkeypatch.setattr(demo, "pending_candidate", lambda settings: "3")
    monkeypatch.setattr(demo, "gate_pending", pending)
    monkeypatch.setattr(day_feed, "produce", produce)
    monkeypatch.setattr(day_feed, "run_ingest", lambda *args, **kwargs: None)
    monkeypatch.setattr(demo, "build_features", lambda *args, **kwargs: SimpleNamespace(versions=lambda: {}))
    monkeypatch.setattr(demo, "_SteadyClient", FakeClient)
    FakeClient.waited_for = []
    return sent


@pytest.mark.parametrize("promote", [False, True])
def test_the_round_runs_in_dagster_then_prints_the_gate_once_and_the_frozen_and_updated_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, promote: bool
) -> None:
    label: Any = "promoted" if promote else "refused"
    window = {"start_ms": 1, "length_ms": 86_400_000, "targets": 812}
    comparison = SimpleNamespace(
        production_version="1",
        production_metrics={"window_ndcg_10": 0.0811, "window_unknown_target_share": 0.0412},
        candidate_version="3",
        candidate_metrics={"window_ndcg_10": 0.0934, "window_new_ndcg_10": 0.0521, "window_unknown_target_share": 0.0},
        window=window,
    )

    def pending(settings: Settings, policy: Any, log: Any) -> Any:
        log(f"gate (pending v3): {label}: {REASON}")
        return SimpleNamespace(decision=Decision(promote, label, REASON, 0.0934), comparison=comparison)

    dagster = FakeDagster()
    sent = _fake_round(monkeypatch, dagster, pending)
    settings = Settings(home=tmp_path, topic="demo-topic")
    demo._warm_start_round(settings, demo.DemoOptions(events=2_800, epochs=7, workers=2), "u1")
    output = capsys.readouterr().out
    printed = " ".join(output.split())
    # One run of loop_job, on the demo's own settings, with the warm start's epochs and workers.
    [(job, run_config)] = dagster.launched
    assert job == "loop_job" and run_config["resources"]["streamrec"]["config"]["topic"] == "demo-topic"
    model_config = run_config["ops"]["retrieval_model"]["config"]
    assert model_config["train"]["epochs"] == demo.WARM_START_TRAIN["epochs"] and model_config["workers"] == 2
    assert f"Dagster run of loop_job: {settings.dagster.url}/runs/run-1" in printed
    assert "run STARTED" in printed and "run SUCCESS" in printed and "registered candidate v3" in printed
    assert printed.count(REASON) == 1 and f"gate (pending v3): {label}: {REASON}" in printed
    assert FakeClient.waited_for == (["3"] if promote else [])
    assert len(sent) == 2 and all(20 < count < 400 for count in sent)  # two days of about 2,800 / 28 events (sessions)
    assert "812 target events neither model trained on" in printed
    rows = [line.replace("│", " ").split() for line in output.splitlines() if "│" in line]
    assert ["frozen", "(production)", "v1", "0.0811", "-", "-", "0.0412"] in rows
    assert ["updated", "(warm", "start)", "v3", "0.0934", "-", "0.0521", "0.0000"] in rows


def test_a_failed_round_run_stops_the_demo_naming_the_step_and_the_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def pending(settings: Settings, policy: Any, log: Any) -> Any:
        raise AssertionError("no gate after a failed round")

    _fake_round(monkeypatch, FakeDagster("FAILURE"), pending)
    with pytest.raises(DagsterApiError, match=r"ended FAILURE \(retrieval_model FAILURE\): http\S+/runs/run-1"):
        demo._warm_start_round(Settings(home=tmp_path), demo.DemoOptions(events=2_800), "u1")


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

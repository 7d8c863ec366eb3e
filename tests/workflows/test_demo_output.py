"""What the demo prints about its warm-start round and at its close, with the round's training,
gate, producer and ingestion replaced (no service)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from infra.cli import ray_dashboard_line
from infra.settings import Settings
from serving.deploy import base_url
from training.common import tracking
from workflows import demo, rounds
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


@pytest.mark.parametrize("promote", [False, True])
def test_the_round_prints_the_gate_decision_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, promote: bool
) -> None:
    label = "promoted" if promote else "refused"
    decision = Decision(promote=promote, label=label, reason=REASON, candidate_value=0.0936)
    candidate = rounds.Candidate(SimpleNamespace(model_version="3"), "2", "hstu")  # type: ignore[arg-type]
    monkeypatch.setattr(rounds, "train_candidate", lambda settings, options, log: candidate)
    monkeypatch.setattr(rounds, "run_gate", lambda settings, version, policy: SimpleNamespace(decision=decision))
    monkeypatch.setattr(demo, "produce", lambda *args, **kwargs: None)
    monkeypatch.setattr(demo, "run_ingest", lambda *args, **kwargs: None)
    monkeypatch.setattr(demo, "build_features", lambda *args, **kwargs: SimpleNamespace(versions=lambda: {}))
    monkeypatch.setattr(demo, "_SteadyClient", FakeClient)
    FakeClient.waited_for = []

    demo._warm_start_round(Settings(home=tmp_path), demo.DemoOptions(events=100), "u1")
    printed = " ".join(capsys.readouterr().out.split())
    assert printed.count(REASON) == 1, printed
    assert f"gate: {label}: {REASON}" in printed
    assert FakeClient.waited_for == (["3"] if promote else [])


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
    from ingestion.synthetic import SyntheticConfig, generate_events

    settings = Settings(home=tmp_path)

    def event_ids(seed: int) -> list[str]:
        config = SyntheticConfig(users=5, items=20, events=50, seed=seed, start_ms=demo._clock_start(settings, seed))
        return [event["event_id"] for event in generate_events(config)]

    first = event_ids(0)
    assert event_ids(0) == first  # the rerun
    assert set(event_ids(1)).isdisjoint(first)  # another seed, other events
    assert (tmp_path / "demo" / "synthetic-clock.json").is_file()

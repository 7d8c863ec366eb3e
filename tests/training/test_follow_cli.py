"""`streamrec train --follow`: the options it refuses (exit 2, before anything loads) and what it
passes to the follow loop (replaced here: no MLflow, no lake)."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from clidata import WIDE, training_app
from typer.testing import CliRunner

from training.streaming import follow as follow_module


@pytest.fixture
def app() -> typer.Typer:
    return training_app()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []

    def fake(settings: object, fields: dict[str, Any], base_version: int | None, every: float, log: Any) -> None:
        found.append((fields, base_version, every))

    monkeypatch.setattr(follow_module, "follow", fake)
    return found


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--base-version", "3"], "--base-version goes with --follow"),
        (["--follow", "--publish-every", "0"], "--publish-every must be a positive number"),
        (["--follow", "--publish-every", "-5"], "--publish-every must be a positive number"),
        (["--follow", "--base-version", "0"], "--base-version must be a registered version"),
        (["--follow", "--workers", "2"], "--workers do(es) not apply to --follow"),
        (["--follow", "--warm-start", "4", "--json"], "--warm-start, --json do(es) not apply to --follow"),
        (["--follow", "--resume", "run-1"], "--resume do(es) not apply"),
        (["--follow", "--dim", "16"], "encoder options do not apply to --follow"),
        (["--follow", "--matryoshka-dims", "8"], "--matryoshka-dims do(es) not apply"),
        (["--follow", "--lr", "-1"], "invalid training config"),
    ],
)
def test_bad_options_exit_2_with_a_reason(
    app: typer.Typer, calls: list[tuple[Any, ...]], args: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, ["train", *args], env=WIDE)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert calls == []


def test_the_follow_loop_gets_the_options(app: typer.Typer, calls: list[tuple[Any, ...]]) -> None:
    args = ["train", "--follow", "--base-version", "7", "--publish-every", "5", "--lr", "0.01", "--batch-size", "64"]
    result = CliRunner().invoke(app, args, env=WIDE)
    assert result.exit_code == 0, result.output
    assert calls == [({"lr": 0.01, "batch_size": 64}, 7, 5.0)]


def test_help_names_the_follow_options(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["train", "--help"], env=WIDE)
    text = " ".join(result.output.split())
    for option in ("--follow", "--base-version", "--publish-every"):
        assert option in text

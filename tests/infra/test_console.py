"""The commands' console off a terminal (a pipe, a log file): tables at their natural width,
never cut to ellipses; text unwrapped; rules at the console's width."""

from __future__ import annotations

import io
from typing import Any

import pytest
import typer
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from infra.console import make_console
from training.cli import register
from training.retrieval import popularity

NARROW = {"COLUMNS": "80", "NO_COLOR": "1"}  # rich's fallback width off a terminal, set so a terminal can't widen it
METRICS = ("hr_10", "ndcg_10", "hr_50", "ndcg_50", "mrr", "all_hr_10", "all_ndcg_10", "all_hr_50", "all_ndcg_50")


def _wide_table() -> Table:
    table = Table(title="a table wider than 80 columns")
    table.add_column("split")
    for name in METRICS:
        table.add_column(f"test_{name}", justify="right")
    table.add_row("test", *(f"0.{index:04d}" for index in range(1000, 1000 + len(METRICS))))
    return table


def _printed(console: Console, *objects: Any) -> str:
    console.print(*objects)
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def test_a_wide_table_is_printed_whole_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    plain = Console(file=io.StringIO())
    assert not plain.is_terminal and plain.width == 80
    assert "…" in _printed(plain, _wide_table())  # what rich alone does with it

    console = make_console()
    console.file = io.StringIO()
    output = _printed(console, _wide_table())
    assert "…" not in output
    for name in METRICS:
        assert f"test_{name}" in output
    for index in range(1000, 1000 + len(METRICS)):
        assert f"0.{index:04d}" in output
    assert max(len(line) for line in output.splitlines()) > 80
    assert console.width == 80  # widened for the table only


def test_rules_keep_the_console_width_and_text_is_not_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    path = "/tmp/" + "a-long-directory/" * 8 + "auth_token"
    line = f"sign in with the token in {path} (then reload)"
    console = make_console()
    console.file = io.StringIO()
    console.rule("a stage")
    output = _printed(console, line)
    rule, printed = output.splitlines()
    assert len(rule) == 80
    assert printed == line  # rich alone folds the path at column 80
    assert line not in _printed(Console(file=io.StringIO()), line).splitlines()


def test_streamrec_train_prints_its_metrics_table_whole_into_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case: `streamrec train ... > train.log` printed columns of '…'."""
    metrics = {f"{split}_{name}": 0.1234 + index / 1e4 for split in ("val", "test") for index, name in
               enumerate(METRICS)}  # fmt: skip
    monkeypatch.setattr(popularity, "train_popularity", lambda settings, config, log=None: metrics)
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["train", "--model", "popularity"], env=NARROW)
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    for name in METRICS:
        assert f" {name} " in result.output
    for value in metrics.values():
        assert f"{value:.4f}" in result.output

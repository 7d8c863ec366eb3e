"""`streamrec features build [--incremental] [--json]` and `streamrec features versions`: what a
user reads. The commands run in-process (the features CLI's Typer app) on the features tests'
Spark session: each `streamrec features build` subprocess started a Spark JVM of its own (the
console script with its own Spark runs in tests/infra/test_cluster_profile.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from click.testing import Result
from featuredata import append_silver, silver_rows
from typer.testing import CliRunner

from features.cli import register
from infra.settings import get_settings


@pytest.fixture
def cli(spark: object, tmp_path: Path) -> Callable[..., Result]:
    """`streamrec ARGS` on a streamrec home of its own (tmp_path), stdout and stderr apart."""
    app = typer.Typer()
    register(app)
    env = {"STREAMREC_HOME": str(tmp_path), "COLUMNS": "200"}

    def run(*args: str) -> Result:
        result = CliRunner().invoke(app, list(args), env=env)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        return result

    return run


def test_build_prints_versions_read_and_written(cli: Callable[..., Result], tmp_path: Path) -> None:
    settings = get_settings(home=tmp_path)
    missing = cli("features", "build")
    assert missing.exit_code == 1 and "run ingestion first" in missing.stdout

    append_silver(settings, silver_rows([("u1", "a", "click", 10), ("u1", "b", "view", 20), ("u2", "a", "like", 5)]))
    full = cli("features", "build")
    assert full.exit_code == 0, full.output
    assert "read silver/events version 0" in full.stdout
    assert "features/user_sequences: 2 rows written -> version 0" in full.stdout
    assert "features build (full) from silver/events version 0" in full.stdout

    append_silver(settings, silver_rows([("u3", "c", "click", 30)], first_offset=10))
    incremental = cli("features", "build", "--incremental")
    assert incremental.exit_code == 0, incremental.output
    assert "silver versions 0..1: 1 new rows" in incremental.stdout
    assert "features/item_vocab: 1 rows appended -> version 1" in incremental.stdout
    assert "features build (incremental) from silver/events version 1" in incremental.stdout

    outcome = cli("features", "build", "--incremental", "--json")  # nothing new: tables up to date
    assert outcome.exit_code == 0, outcome.output
    assert "read silver/events version 1" in outcome.stderr  # progress on stderr, stdout is the JSON alone
    assert json.loads(outcome.stdout) == {
        "mode": "incremental",
        "silver_version": 1,
        "rows_written": {"features/item_vocab": 0, "features/user_sequences": 0, "features/item_stats": 0},
        "versions": {"silver/events": 1, "features/item_vocab": 1, "features/user_sequences": 1,
                     "features/item_stats": 1},
    }  # fmt: skip

    versions = cli("features", "versions")
    assert json.loads(versions.stdout) == {"features/item_vocab": 1, "features/user_sequences": 1}

"""`streamrec features build [--incremental]` and `streamrec features versions` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from featuredata import append_silver, silver_rows

from infra.settings import get_settings

STREAMREC = str(Path(sys.executable).parent / "streamrec")


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STREAMREC, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.integration  # Spark, in the `streamrec features build` subprocess
def test_build_prints_versions_read_and_written(test_env: dict[str, str], tmp_path: Path) -> None:
    env = {**os.environ, **test_env, "STREAMREC_HOME": str(tmp_path), "COLUMNS": "200"}
    settings = get_settings(home=tmp_path)
    missing = _cli(env, "features", "build")
    assert missing.returncode == 1 and "run ingestion first" in missing.stdout

    append_silver(settings, silver_rows([("u1", "a", "click", 10), ("u1", "b", "view", 20), ("u2", "a", "like", 5)]))
    full = _cli(env, "features", "build")
    assert full.returncode == 0, full.stderr
    assert "read silver/events version 0" in full.stdout
    assert "features/user_sequences: 2 rows written -> version 0" in full.stdout
    assert "features build (full) from silver/events version 0" in full.stdout

    append_silver(settings, silver_rows([("u3", "c", "click", 30)], first_offset=10))
    incremental = _cli(env, "features", "build", "--incremental")
    assert incremental.returncode == 0, incremental.stderr
    assert "silver versions 0..1: 1 new rows" in incremental.stdout
    assert "features/item_vocab: 1 rows appended -> version 1" in incremental.stdout
    assert "features build (incremental) from silver/events version 1" in incremental.stdout

    outcome = _cli(env, "features", "build", "--incremental", "--json")  # nothing new: tables up to date
    assert outcome.returncode == 0, outcome.stderr
    assert "read silver/events version 1" in outcome.stderr  # progress on stderr, stdout is the JSON alone
    assert json.loads(outcome.stdout) == {
        "mode": "incremental",
        "silver_version": 1,
        "rows_written": {"features/item_vocab": 0, "features/user_sequences": 0, "features/item_stats": 0},
        "versions": {"silver/events": 1, "features/item_vocab": 1, "features/user_sequences": 1,
                     "features/item_stats": 1},
    }  # fmt: skip

    versions = _cli(env, "features", "versions")
    assert json.loads(versions.stdout) == {"features/item_vocab": 1, "features/user_sequences": 1}

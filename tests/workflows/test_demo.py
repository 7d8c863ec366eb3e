"""`make demo` (`streamrec demo`) end to end on the real mini-cluster, with small data and one epoch.

One run: the demo costs a few minutes even this small. What a rerun after a broker restart relies
on is tested where it lives, at a fraction of the cost: the stream starting over on the recreated
topic with the same events written once to silver (tests/ingestion/test_ingest.py), the served
history reading a recreated topic from its start (tests/serving/test_history.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from deltalake import DeltaTable

from infra import cluster
from infra.settings import Settings, get_settings
from ingestion.schema import BRONZE_TABLE, QUARANTINE_TABLE

pytestmark = pytest.mark.e2e  # every stage of `streamrec demo` on the mini-cluster

EVENTS = 4_000


def _run_demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    args = ["--events", str(EVENTS), "--users", "150", "--items", "300", "--epochs", "1", "--ranking-epochs", "1",
            "--bad-fraction", "0.02"]  # fmt: skip
    return subprocess.run(
        [str(Path(sys.executable).parent / "streamrec"), "demo", *args],
        env=env,
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=900,
    )


def _line(stdout: str, prefix: str) -> str:
    """The rest of the demo output line that starts with ``prefix``."""
    return next(line.removeprefix(prefix) for line in stdout.splitlines() if line.startswith(prefix))


def _count(text: str) -> int:
    """The first number of ``text`` (``"4,012 records ..."`` -> 4012)."""
    found = re.search(r"\d[\d,]*", text)
    assert found, text
    return int(found.group().replace(",", ""))


def _rows(settings: Settings, table: str) -> int:
    return DeltaTable(settings.table_uri(table)).to_pyarrow_dataset().count_rows()


def test_demo_runs_every_stage(mini_cluster: Settings, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "STREAMREC_TOPIC": f"demo-{uuid.uuid4().hex[:8]}",
        "STREAMREC_LAKE_URI": str(tmp_path / "lake"),
    }
    settings = get_settings(topic=env["STREAMREC_TOPIC"], lake_uri=env["STREAMREC_LAKE_URI"])

    try:
        demo = _run_demo(env)
    finally:  # the demo starts Dagster (the suite's cluster runs without it): stop it for the tests after
        cluster.down(get_settings(dagster_enabled=True), ["dagster"])
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    # Every record sent lands once: the stream's first days, the two days of the round, one dislike.
    sent = _count(_line(demo.stdout, "sent "))
    days = [_count(line) for line in demo.stdout.splitlines() if re.match(r"[\d,]+ (new )?events .*ingested", line)]
    assert len(days) == 2 and sent > EVENTS * 0.9
    assert _rows(settings, BRONZE_TABLE) + _rows(settings, QUARANTINE_TABLE) == sent + sum(days) + 1
    assert _rows(settings, QUARANTINE_TABLE) > 0
    assert "HSTU is version" in demo.stdout and "test split" in demo.stdout
    assert "serving version" in demo.stdout and "/recommend for" in demo.stdout
    assert "after a dislike of" in demo.stdout  # the new action reached the served recommendations
    # The round ran as a Dagster run of loop_job, the gate of its waiting candidate as one of promotion_job
    # (the UI shows both); the decision that run recorded is printed once.
    for job in ("loop_job", "promotion_job"):
        assert re.search(rf"Dagster run of {job}: http://\S+/runs/[0-9a-f-]{{36}}", demo.stdout), demo.stdout[-3000:]
    assert demo.stdout.count("  run SUCCESS") == 2 and "registered candidate v" in demo.stdout
    assert demo.stdout.count("gate (pending v") == 1, demo.stdout[-3000:]
    assert "failed requests during the round: 0 of" in demo.stdout
    # The ranking stage: examples, the ranker next to the popularity baseline, served with the retrieval model.
    assert "features/ranking_examples version" in demo.stdout and "ranking: exposures" in demo.stdout
    assert f"serving {settings.mlflow.registered_ranking_model} version" in demo.stdout
    lineage = json.loads(_line(demo.stdout, "/recommend lineage.model_version: "))
    assert set(lineage) == {
        settings.mlflow.registered_model,
        settings.mlflow.registered_ranking_model,
    }  # both models answered
    print("ranking stage:", _line(demo.stdout, "ranking stage: "))
    print(demo.stdout[demo.stdout.index("Dagster run of loop_job") :])  # the round, its gate and the closing lines

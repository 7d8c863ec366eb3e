"""`make demo` (`streamrec demo`) end to end on the real mini-cluster, with small data and one epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from deltalake import DeltaTable
from kafka.admin import KafkaAdminClient

from infra.settings import Settings, get_settings
from ingestion.schema import BRONZE_TABLE, QUARANTINE_TABLE, SILVER_TABLE

pytestmark = pytest.mark.e2e  # every stage of `streamrec demo` on the mini-cluster

EVENTS = 4_000
# Per run: the synthetic events, a tenth as many new ones before the warm-start round, one dislike.
RECORDS_PER_RUN = EVENTS + EVENTS // 10 + 1


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
    """The rest of the first output line that starts with ``prefix``."""
    return next(line.removeprefix(prefix) for line in stdout.splitlines() if line.startswith(prefix))


def _rows(settings: Settings, table: str) -> int:
    return DeltaTable(settings.table_uri(table)).to_pyarrow_dataset().count_rows()


def test_demo_runs_every_stage_and_reruns_on_a_new_topic_without_duplicates(
    mini_cluster: Settings, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "STREAMREC_TOPIC": f"demo-{uuid.uuid4().hex[:8]}",
        "STREAMREC_LAKE_URI": str(tmp_path / "lake"),
    }
    settings = get_settings(topic=env["STREAMREC_TOPIC"], lake_uri=env["STREAMREC_LAKE_URI"])

    first = _run_demo(env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert _rows(settings, BRONZE_TABLE) + _rows(settings, QUARANTINE_TABLE) == RECORDS_PER_RUN
    assert _rows(settings, QUARANTINE_TABLE) > 0
    assert "HSTU is version" in first.stdout and "test split" in first.stdout
    assert "serving version" in first.stdout and "/recommend for" in first.stdout
    assert "after a dislike of" in first.stdout  # the new action reached the served recommendations
    assert "gate: " in first.stdout and "failed requests during the round: 0 of" in first.stdout
    # The ranking stage: examples, the ranker next to the popularity baseline, served with the retrieval model.
    assert "features/ranking_examples version" in first.stdout and "ranking: exposures" in first.stdout
    assert f"serving {settings.mlflow.registered_ranking_model} version" in first.stdout
    lineage = json.loads(_line(first.stdout, "/recommend lineage.model_version: "))
    assert set(lineage) == {
        settings.mlflow.registered_model,
        settings.mlflow.registered_ranking_model,
    }  # both models answered
    print("first run:", _line(first.stdout, "ranking stage: "))
    silver_rows = _rows(settings, SILVER_TABLE)

    # A restarted local broker loses its topics: a new (empty) topic under the same name.
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    try:
        admin.delete_topics([settings.kafka.topic])
    finally:
        admin.close()
    second = _run_demo(env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "ingest starts over" in second.stdout
    assert "after a dislike of" in second.stdout  # served again, its history tailing the new topic
    print("second run:", _line(second.stdout, "ranking stage: "))
    assert _rows(settings, BRONZE_TABLE) + _rows(settings, QUARANTINE_TABLE) == 2 * RECORDS_PER_RUN
    assert _rows(settings, SILVER_TABLE) == silver_rows + 1  # the same events again: one copy each (+ a new dislike)

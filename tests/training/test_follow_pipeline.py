"""`streamrec train --follow` as a process, on a copy of the session's trained pipeline lake and
its registered HSTU version (real MLflow): deltas for a day of new events (new items among them),
a kill -9 mid-run, a restart that converges, SIGTERM publishing before it exits."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

from deltalake import DeltaTable, write_deltalake
from lakedata import silver_table
from pipelinedata import EVENTS

from features.tables import ITEM_VOCAB_TABLE
from infra.settings import Settings, get_settings
from ingestion.schema import SILVER_TABLE
from ingestion.synthetic import SyntheticConfig, generate_events
from training.retrieval.runner import TrainOutcome
from training.streaming.deltas import MODEL_DELTAS_TABLE, DeltaPosition, ModelDelta, ModelDeltaTable

HEADROOM = 400
DIM = 32  # pipelinedata.tiny_config


def _start(env: dict[str, str], version: str, log: IO[str]) -> subprocess.Popen[str]:
    cli = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "streamrec")
    command = [cli, "train", "--follow", "--base-version", version, "--publish-every", "1"]
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def _deltas(settings: Settings, version: str) -> list[ModelDelta]:
    table = ModelDeltaTable(settings.table_uri(MODEL_DELTAS_TABLE))
    return list(table.after(DeltaPosition(settings.mlflow.registered_model, int(version)), width=DIM))


def _wait(condition: object, what: str, log: Path, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; the job's output:\n{log.read_text()}")


def test_follow_process_publishes_survives_kill_9_and_stops_on_sigterm(
    settings: Settings, hstu_run: TrainOutcome, tmp_path: Path
) -> None:
    shutil.copytree(settings.home / "lake", tmp_path / "lake")
    lake = get_settings(home=tmp_path, registered_model=settings.mlflow.registered_model)
    silver_uri = lake.table_uri(SILVER_TABLE)
    env = {
        **os.environ,
        "STREAMREC_HOME": str(tmp_path),
        "STREAMREC_REGISTERED_MODEL": settings.mlflow.registered_model,
        "STREAMREC_TRAIN_FOLLOW_ITEM_HEADROOM": str(HEADROOM),
        "STREAMREC_TRAIN_FOLLOW_POLL_S": "0.2",
        "STREAMREC_TRAIN_FOLLOW_MAX_STEPS": "5",
    }
    # After the pipeline's events (its clock ends about a day ago), over 1,200 items: some new.
    later = SyntheticConfig(users=300, items=1_200, events=3_000, clusters=20, seed=2,
                            start_ms=EVENTS.start_ms + int((EVENTS.span_days + 0.5) * 86_400_000),
                            span_days=0.25)  # fmt: skip
    events = list(generate_events(later))
    vocab = DeltaTable(lake.table_uri(ITEM_VOCAB_TABLE)).to_pyarrow_table()
    base_items = max(vocab.column("item_index").to_pylist())  # the copy's vocabulary: the base's
    new_items = {event["item_id"] for event in events} - set(vocab.column("item_id").to_pylist())
    assert 0 < len(new_items) <= HEADROOM
    parts = [events[:1_000], events[1_000:2_000], events[2_000:]]

    def append(part: int) -> int:
        rows = silver_table(parts[part], first_offset=EVENTS.events + 1_000 * part)
        write_deltalake(silver_uri, rows, mode="append", partition_by=["event_date"])
        return DeltaTable(silver_uri).version()

    first_log = tmp_path / "follow-1.log"
    with first_log.open("w") as out:
        job = _start(env, hstu_run.model_version, out)
        try:
            _wait(lambda: "following silver/events" in first_log.read_text(), "the job to start", first_log)
            first_version = append(0)
            _wait(lambda: any(d.silver_version == first_version for d in _deltas(lake, hstu_run.model_version)),
                  "a delta of the first part", first_log)  # fmt: skip
            append(1)
            time.sleep(1.0)  # mid-run: learning the second part, maybe publishing it
        finally:
            job.kill()  # SIGKILL: nothing after the last delta survives
            job.wait(30)
    assert job.returncode == -signal.SIGKILL
    assert "events learned" in first_log.read_text()

    second_log = tmp_path / "follow-2.log"
    with second_log.open("w") as out:
        job = _start(env, hstu_run.model_version, out)
        try:
            _wait(lambda: "resumed after delta" in second_log.read_text(), "the restart", second_log)
            latest = append(2)
            _wait(lambda: _deltas(lake, hstu_run.model_version)[-1].silver_version == latest,
                  "the restart to catch up", second_log)  # fmt: skip
        finally:
            job.send_signal(signal.SIGTERM)
            job.wait(120)
    output = second_log.read_text()
    assert job.returncode == 0, output
    assert "stopped:" in output

    chain = _deltas(lake, hstu_run.model_version)  # `after` checks the sequence and the checksum chain
    silver_versions = [delta.silver_version for delta in chain]
    assert silver_versions == sorted(set(silver_versions)) and silver_versions[-1] == latest
    announced = [item for delta in chain for item in delta.new_items]
    assert len(announced) == len(set(announced)) and set(announced) == new_items  # each new item once
    vocab = DeltaTable(lake.table_uri(ITEM_VOCAB_TABLE)).to_pyarrow_table()
    index_of = dict(zip(vocab.column("item_id").to_pylist(), vocab.column("item_index").to_pylist(), strict=True))
    for delta in chain:
        assert all(index_of[item] == index > base_items for item, index in delta.new_items.items())
        assert int(delta.item_indices.max()) <= base_items + HEADROOM
    assert chain[-1].kafka_offsets  # the Kafka positions it reflects

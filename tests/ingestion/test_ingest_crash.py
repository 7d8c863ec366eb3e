"""kill -9 of a running `streamrec ingest` (driver, JVM and workers) mid-stream, restarted: nothing lost or doubled."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from ingestdata import encode_event, env_of, events, fresh_settings, mixed_records, send
from test_ingest import _assert_exact

from infra.polling import wait_until
from infra.settings import Settings
from ingestion.checkpoints import checkpoint_path

STREAMREC = str(Path(sys.executable).parent / "streamrec")


def _committed_batches(settings: Settings) -> int:
    commits = checkpoint_path(settings) / "commits"
    return len([p for p in commits.glob("[0-9]*")]) if commits.is_dir() else 0


def _start(settings: Settings, env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    with log.open("a") as out:
        return subprocess.Popen([STREAMREC, "ingest", *args], env=env, stdout=out, stderr=out, start_new_session=True)


def test_kill_9_mid_stream_and_restart_loses_and_duplicates_nothing(
    kafka_broker: Settings, test_env: dict[str, str], tmp_path: Path
) -> None:
    settings = fresh_settings(
        tmp_path, partitions=4, ingest_max_records_per_trigger=400, ingest_max_event_bytes=1000,
        ingest_trigger_interval_s=0.2,
    )  # fmt: skip
    env = {
        **env_of(settings, test_env),
        "STREAMREC_INGEST_MAX_RECORDS_PER_TRIGGER": "400",
        "STREAMREC_INGEST_MAX_EVENT_BYTES": "1000",
        "STREAMREC_INGEST_TRIGGER_INTERVAL_S": "0.2",
    }
    rng = random.Random(42)
    log = tmp_path / "ingest.log"
    records = mixed_records(settings, 6_000)
    sent = send(settings, records + [r for r in records if r.kind is None][:300])  # some events twice

    kills = 0
    for round_ in range(3):
        before = _committed_batches(settings)
        process = _start(settings, env, log)

        def progressed(process: subprocess.Popen = process, before: int = before) -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            return _committed_batches(settings) > before

        wait_until(progressed, 240, interval_s=0.1, what="the stream to commit a micro-batch")
        time.sleep(rng.uniform(0.0, 2.5))  # somewhere inside a later micro-batch
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        kills += 1
        # New records arrive while ingestion is down.
        sent += send(settings, [encode_event(e) for e in events(300, seed=100 + round_)])

    done = subprocess.run([STREAMREC, "ingest", "--until-idle"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert kills == 3
    _assert_exact(settings, sent)

"""The silver sensor (one run per new Delta version, never two) and the checks' figures, on a
lake written as ingestion writes it (no services needed). The checks' verdicts on a real
ingest run are in test_workflow_loop.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg
import pytest
from workflowdata import append_clicks

from features.tables import USER_SEQUENCES_TABLE
from infra.settings import Settings, get_settings
from ingestion.schema import SILVER_TABLE
from workflows.checks import quarantine_rate_of, row_drift_of
from workflows.lineage import newest_event_ms
from workflows.resources import StreamrecResource
from workflows.sensors import silver_events_sensor


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return get_settings(home=tmp_path)


def _tick(settings: Settings, instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"streamrec": StreamrecResource.from_settings(settings)}
    )
    result = silver_events_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def test_silver_sensor_requests_one_run_per_new_delta_version(settings: Settings) -> None:
    instance = dg.DagsterInstance.ephemeral()
    first = _tick(settings, instance, None)
    assert not first.run_requests and "no silver/events table" in str(first.skip_reason)

    version = append_clicks(settings, users=3, per_user=4)
    fired = _tick(settings, instance, first.cursor)
    assert [request.tags["streamrec/silver_version"] for request in fired.run_requests or []] == [str(version)]
    assert json.loads(fired.cursor or "")["version"] == version

    again = _tick(settings, instance, fired.cursor)  # the daemon passes the stored cursor back
    assert not again.run_requests and again.cursor == fired.cursor
    assert f"still at version {version}" in str(again.skip_reason)

    newer = append_clicks(settings, users=2, per_user=2)
    next_fired = _tick(settings, instance, again.cursor)
    keys = [request.run_key for request in next_fired.run_requests or []]
    assert len(keys) == 1 and keys[0].endswith(f"-v{newer}") and keys[0] != fired.run_requests[0].run_key  # type: ignore[index]
    assert not _tick(settings, instance, next_fired.cursor).run_requests


def test_silver_sensor_starts_over_on_a_recreated_table(settings: Settings) -> None:
    import shutil

    instance = dg.DagsterInstance.ephemeral()
    append_clicks(settings, users=2, per_user=2)
    append_clicks(settings, users=2, per_user=2)
    seen = _tick(settings, instance, None)
    assert json.loads(seen.cursor or "")["version"] == 1
    shutil.rmtree(settings.table_uri(SILVER_TABLE))
    append_clicks(settings, users=1, per_user=2)  # version 0 of a new table
    fired = _tick(settings, instance, seen.cursor)
    assert len(fired.run_requests or []) == 1 and json.loads(fired.cursor or "")["version"] == 0


def test_check_figures(settings: Settings) -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    assert quarantine_rate_of(settings).rate == 0.0  # no tables: nothing ingested
    newest = int(time.time() * 1000) - 3_600_000
    append_clicks(settings, users=10, per_user=4, ts_ms=newest)
    assert newest_event_ms(settings, SILVER_TABLE) == newest - 1000
    # Row drift compares a table's latest version with the one before (as a build leaves them).
    uri = settings.table_uri(USER_SEQUENCES_TABLE)
    write_deltalake(uri, pa.table({"user_id": [f"u{i}" for i in range(10)]}))
    first = row_drift_of(settings, USER_SEQUENCES_TABLE)
    assert first.rows == 10 and first.ratio is None  # a first version has nothing to drift from
    write_deltalake(uri, pa.table({"user_id": [f"n{i}" for i in range(5)]}), mode="append")
    drift = row_drift_of(settings, USER_SEQUENCES_TABLE)
    assert (drift.rows, drift.previous_rows, drift.previous_version) == (15, 10, 0)
    assert drift.ratio == pytest.approx(1.5)

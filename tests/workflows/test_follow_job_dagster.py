"""follow_job on a running Dagster (`streamrec up dagster`) with the real `streamrec train --follow`:
a tiny lake and a random base registered in an MLflow registry on SQLite (no server), the run
launched through the webserver, a delta published for new silver events, then the run terminated:
the child publishes and exits, the run ends SUCCESS with its deltas observed."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from infra import cluster
from infra.dagster_automation import graphql
from infra.dagster_runs import launch_run, terminate_run, wait_for_run
from infra.polling import wait_until
from infra.processes import free_port, log_tail
from infra.settings import Settings, get_settings
from training.streaming.deltas import MODEL_DELTAS_TABLE, DeltaPosition, ModelDelta, ModelDeltaTable
from workflows.resources import streamrec_resource_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))  # the follow job's tiny lake
from followlake import START_MS, append_silver, base_model, events, first_build, history  # noqa: E402

LOGS_QUERY = """query($id: ID!) { logsForRun(runId: $id) { __typename
  ... on EventConnection { events { __typename
    ... on MessageEvent { message }
    ... on ObservationEvent { assetKey { path } metadataEntries { label ... on IntMetadataEntry { intRepr } } } } }
  ... on PythonError { message } } }"""
# The base's TrainConfig for a 30-item catalogue (followlake.CONFIG without its encoder: the base's).
TRAIN = {"batch_size": 8, "num_negatives": 8, "in_batch_negatives": 4, "loss": "sampled_logq"}


def _register(settings: Settings, home: Path) -> str:
    """The random base as version 1 of the registered model, under the serving alias."""
    from training.common import tracking
    from training.retrieval.io import save_model

    base = base_model(settings)
    client = tracking.client(settings)
    client.create_experiment(settings.mlflow.experiment, artifact_location=(home / "mlartifacts").as_uri())
    run_id = tracking.start_run(settings, "base", {}, {}, base.info.feature_versions)
    with tempfile.TemporaryDirectory() as directory:
        tracking.log_artifacts(settings, run_id, save_model(Path(directory), base.info, base.weights), "model")
    version = tracking.register(settings, run_id, "model", {})
    client.set_registered_model_alias(settings.mlflow.registered_model, settings.serve.model_alias, version)
    return version


def _deltas(settings: Settings, version: str) -> list[ModelDelta]:
    uri = settings.table_uri(MODEL_DELTAS_TABLE)
    if not DeltaTable.is_deltatable(uri):
        return []
    position = DeltaPosition(settings.mlflow.registered_model, int(version))
    return list(ModelDeltaTable(uri).after(position, width=8))


def _logs(settings: Settings, run_id: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The run's messages and the metadata of its observations of model_deltas."""
    found = graphql(settings, LOGS_QUERY, {"id": run_id})["logsForRun"]
    assert found["__typename"] == "EventConnection", found
    messages = [event["message"] for event in found["events"] if event.get("message")]
    observations = [
        {entry["label"]: entry.get("intRepr") for entry in event["metadataEntries"]}
        for event in found["events"]
        if event["__typename"] == "ObservationEvent" and event["assetKey"]["path"] == ["model_deltas"]
    ]
    return messages, observations


@pytest.mark.integration  # `streamrec up dagster`: no service fixture
def test_a_terminated_follow_run_publishes_stops_its_child_and_succeeds(tmp_path: Path) -> None:
    settings = get_settings(
        home=tmp_path, dagster_enabled=True, dagster_port=free_port(),
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", features_max_len=20,
        train_follow_poll_s=0.2, train_follow_max_steps=5, train_follow_item_headroom=50,
    )  # fmt: skip
    first_build(settings, history())
    version = _register(settings, tmp_path)
    try:
        (state,) = cluster.up(settings, ["dagster"])
        assert state.healthy, state
        config = {"base_version": 0, "publish_every_s": 1, "train": TRAIN}  # 0: the alias's version
        run_id = launch_run(
            settings,
            "follow_job",
            {"resources": streamrec_resource_config(settings), "ops": {"follow_loop": {"config": config}}},
        )
        # After the base's silver version: learned whether the child started yet or not; items 31, 32 are new.
        silver = append_silver(settings, events([1, 2, 3, 1, 2, 3], [4, 5, 31, 32, 6, 7], START_MS + 10**7, "n"), 500)
        try:
            wait_until(lambda: any(delta.silver_version == silver for delta in _deltas(settings, version)), 240,
                       interval_s=1, what=f"a delta of silver version {silver}")  # fmt: skip
        except TimeoutError as error:
            messages, _ = _logs(settings, run_id)
            dagster_log = log_tail(settings.log_dir / "dagster.log", 30)
            raise AssertionError(f"{error}; the run's log:\n" + "\n".join(messages[-40:]) + dagster_log) from error
        terminate_run(settings, run_id)
        end = wait_for_run(settings, run_id, 180)
        messages, observations = _logs(settings, run_id)
        assert end.status == "SUCCESS", (end, messages[-30:])
    finally:
        cluster.down(settings.updated(dagster_enabled=False), ["dagster"])
    chain = _deltas(settings, version)
    assert {item for delta in chain for item in delta.new_items} == {"i31", "i32"}
    assert [int(o["delta_sequence"]) for o in observations] == [delta.sequence for delta in chain]
    assert int(observations[-1]["silver_version"]) == silver
    started = next(message for message in messages if "follow job started" in message)
    assert f"--base-version {version} --publish-every 1 --config " in started
    pid = int(re.search(r"pid (\d+)", started)[1])  # type: ignore[index]
    with pytest.raises(ProcessLookupError):  # the child exited (and was waited for)
        os.kill(pid, 0)
    assert any(message.startswith("stopped: ") for message in messages)  # its clean stop, after SIGTERM
    assert any("follow job stopped (the Dagster run was terminated)" in message for message in messages)

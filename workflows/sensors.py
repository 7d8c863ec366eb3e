"""Sensors: new silver versions start feature builds; new registered models go through the gate,
and a candidate the freshness gate left waiting goes through it again once newer features exist;
the follow sensor keeps one follow job running on the production version.

The first two keep their position in the Dagster cursor (persisted by the daemon in the instance
storage) and give each run a run key, so one change never starts two runs: a cursor that
was lost or reset still meets Dagster's refusal to launch a run key twice. The follow sensor
reads the instance's runs instead. All three are part of the loop that `streamrec up
--continual` turns on (they start stopped).
"""

# No `from __future__ import annotations`: Dagster reads the context and resource annotations at definition.
import json
import time

import dagster as dg
from dagster import SensorEvaluationContext

from infra.dagster_automation import LOOP_TAG, LOOP_TAG_VALUE
from infra.settings import Settings
from ingestion.schema import SILVER_TABLE
from workflows.assets.promotion import EvaluationConfig
from workflows.jobs import features_job, follow_job, promotion_job
from workflows.resources import StreamrecResource


@dg.sensor(
    job=features_job,
    minimum_interval_seconds=30,
    description="A new Delta version of silver/events requests one incremental feature build.",
    tags={LOOP_TAG: LOOP_TAG_VALUE},
)
def silver_events_sensor(context: SensorEvaluationContext, streamrec: StreamrecResource) -> dg.SensorResult:
    from deltalake import DeltaTable

    uri = streamrec.settings().table_uri(SILVER_TABLE)
    if not DeltaTable.is_deltatable(uri):
        return dg.SensorResult(skip_reason=f"no {SILVER_TABLE} table at {uri} yet", cursor=context.cursor)
    table = DeltaTable(uri)
    version, table_id = table.version(), str(table.metadata().id)
    seen = json.loads(context.cursor) if context.cursor else {}
    # A recreated table (another id) starts again from its own versions.
    if seen.get("table_id") == table_id and version <= int(seen.get("version", -1)):
        return dg.SensorResult(skip_reason=f"{SILVER_TABLE} is still at version {version}", cursor=context.cursor)
    request = dg.RunRequest(
        run_key=f"silver-{table_id}-v{version}",
        tags={"streamrec/silver_version": str(version)},
    )
    return dg.SensorResult(run_requests=[request], cursor=json.dumps({"table_id": table_id, "version": version}))


@dg.sensor(
    job=promotion_job,
    minimum_interval_seconds=60,
    description="A newly registered retrieval model version is evaluated against production and gated; a "
    "candidate the freshness gate left waiting (no events after its data yet) is gated again at each newer "
    "user_sequences version until it is promoted or superseded.",
    tags={LOOP_TAG: LOOP_TAG_VALUE},
)
def registered_model_sensor(context: SensorEvaluationContext, streamrec: StreamrecResource) -> dg.SensorResult:
    """The newest version registered since the last tick is the candidate (older new ones are
    superseded by it); a version that already is production is skipped. With none new, the
    waiting candidate (``workflows.promotion.pending_candidate``) is requested once per newer
    user_sequences version (its run key names it)."""
    from serving.registry import served_version
    from workflows.promotion import registered_versions

    settings = streamrec.settings()
    versions = registered_versions(settings)
    last = int(context.cursor) if context.cursor else 0
    fresh = [version for version in versions if version > last]
    if not fresh:
        pending = pending_request(settings)
        if pending is not None:
            return dg.SensorResult(run_requests=[pending], cursor=context.cursor)
        return dg.SensorResult(
            skip_reason=f"no {settings.mlflow.registered_model} version after {last} and none waiting",
            cursor=context.cursor,
        )
    newest = str(fresh[-1])
    cursor = newest
    if served_version(settings) == newest:
        return dg.SensorResult(skip_reason=f"version {newest} already is production", cursor=cursor)
    request = dg.RunRequest(
        run_key=f"{settings.mlflow.registered_model}-v{newest}",
        run_config=gate_run_config(newest),
        tags={"streamrec/candidate_version": newest, "streamrec/superseded": ",".join(map(str, fresh[:-1]))},
    )
    return dg.SensorResult(run_requests=[request], cursor=cursor)


def gate_run_config(candidate: str) -> dg.RunConfig:
    """The run config of a ``promotion_job`` run that gates registered version ``candidate``."""
    return dg.RunConfig(ops={"retrieval_evaluation": EvaluationConfig(candidate_version=candidate)})


def pending_request(settings: Settings) -> dg.RunRequest | None:
    """A gate run of the waiting candidate at the newest user_sequences version (None: no candidate
    waits). The sensor requests it; `streamrec demo` launches the same run config and tags itself."""
    from features.reader import latest_versions
    from workflows.promotion import pending_candidate

    candidate = pending_candidate(settings)
    if candidate is None:
        return None
    sequences = latest_versions(settings).user_sequences
    return dg.RunRequest(
        run_key=f"{settings.mlflow.registered_model}-v{candidate}-pending-at-user_sequences-{sequences}",
        run_config=gate_run_config(candidate),
        tags={"streamrec/candidate_version": candidate, "streamrec/pending_at_user_sequences": str(sequences)},
    )


# Every run status but the ended ones: a run queued, starting, running or being terminated counts as running.
UNFINISHED = [status for status in dg.DagsterRunStatus if status.value not in ("SUCCESS", "FAILURE", "CANCELED")]
FOLLOW_RETRY_AFTER_S = 300  # after a failed follow run: a child that fails at once does not restart every minute


@dg.sensor(
    job=follow_job,
    minimum_interval_seconds=60,
    description="Keeps one follow_job run (`streamrec train --follow` on the production version) running: "
    "requests one when none is queued or running and the serving alias names a version; after a failed run, "
    f"not for {FOLLOW_RETRY_AFTER_S} s.",
    tags={LOOP_TAG: LOOP_TAG_VALUE},
)
def follow_sensor(context: SensorEvaluationContext, streamrec: StreamrecResource) -> dg.SensorResult:
    """One run at a time: the instance's runs of follow_job are the state (no cursor). The run
    key names the base and the run it follows, so ticks that see the same state request the same
    key, which Dagster launches once; SequenceConflict in the follow job is the last guard."""
    from serving.registry import served_version

    settings = streamrec.settings()
    runs = context.instance.get_runs(dg.RunsFilter(job_name=follow_job.name), limit=1)
    unfinished = context.instance.get_runs(dg.RunsFilter(job_name=follow_job.name, statuses=UNFINISHED), limit=1)
    if unfinished:
        run = unfinished[0]
        return dg.SensorResult(skip_reason=f"follow_job run {run.run_id} is {run.status.value.lower()}")
    base = served_version(settings)
    if base is None:
        alias = settings.serve.model_alias
        return dg.SensorResult(skip_reason=f"{settings.mlflow.registered_model} has no {alias!r} version to follow")
    last = runs[0] if runs else None
    if last is not None and last.status == dg.DagsterRunStatus.FAILURE:
        record = context.instance.get_run_record_by_id(last.run_id)
        ended = record.end_time if record is not None and record.end_time else time.time()
        if time.time() - ended < FOLLOW_RETRY_AFTER_S:
            return dg.SensorResult(skip_reason=f"follow_job run {last.run_id} failed; next try "
                                   f"{FOLLOW_RETRY_AFTER_S} s after it ended")  # fmt: skip
    request = dg.RunRequest(
        run_key=f"follow-{settings.mlflow.registered_model}-v{base}-after-{last.run_id if last else 'none'}",
        tags={"streamrec/base_version": base},
    )
    return dg.SensorResult(run_requests=[request])


ALL_SENSORS = [silver_events_sensor, registered_model_sensor, follow_sensor]

"""Sensors: new silver versions start feature builds; new registered models go through the gate,
and a candidate the freshness gate left waiting goes through it again once newer features exist.

Both keep their position in the Dagster cursor (persisted by the daemon in the instance
storage) and give each run a run key, so one change never starts two runs: a cursor that
was lost or reset still meets Dagster's refusal to launch a run key twice. Both are part of the
loop that `streamrec up --continual` turns on (they start stopped).
"""

# No `from __future__ import annotations`: Dagster reads the context and resource annotations at definition.
import json

import dagster as dg
from dagster import SensorEvaluationContext

from infra.dagster_automation import LOOP_TAG, LOOP_TAG_VALUE
from infra.settings import Settings
from ingestion.schema import SILVER_TABLE
from workflows.assets.promotion import EvaluationConfig
from workflows.jobs import features_job, promotion_job
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
        pending = _pending_request(settings)
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
        run_config=dg.RunConfig(ops={"retrieval_evaluation": EvaluationConfig(candidate_version=newest)}),
        tags={"streamrec/candidate_version": newest, "streamrec/superseded": ",".join(map(str, fresh[:-1]))},
    )
    return dg.SensorResult(run_requests=[request], cursor=cursor)


def _pending_request(settings: Settings) -> dg.RunRequest | None:
    """A gate run of the waiting candidate at the newest user_sequences version (None: no candidate waits)."""
    from features.reader import latest_versions
    from workflows.promotion import pending_candidate

    candidate = pending_candidate(settings)
    if candidate is None:
        return None
    sequences = latest_versions(settings).user_sequences
    return dg.RunRequest(
        run_key=f"{settings.mlflow.registered_model}-v{candidate}-pending-at-user_sequences-{sequences}",
        run_config=dg.RunConfig(ops={"retrieval_evaluation": EvaluationConfig(candidate_version=candidate)}),
        tags={"streamrec/candidate_version": candidate, "streamrec/pending_at_user_sequences": str(sequences)},
    )


ALL_SENSORS = [silver_events_sensor, registered_model_sensor]

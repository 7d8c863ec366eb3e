"""Ingestion assets: the Kafka topic, and the lake tables one until-idle ingest brings up to date."""

# No `from __future__ import annotations`: Dagster reads the context and resource annotations at definition.
from collections.abc import Iterator

import dagster as dg
from dagster import AssetExecutionContext

from ingestion.checkpoints import topic_ends
from ingestion.lake_writer import SILVER_APP_ID
from ingestion.schema import BRONZE_TABLE, QUARANTINE_TABLE, SILVER_TABLE
from workflows.lineage import data_version, silver_metadata, table_metadata
from workflows.resources import StepRunner, StreamrecResource

GROUP = "ingestion"

user_actions_topic = dg.AssetSpec(
    "user_actions_topic",
    description="The Kafka topic of user actions (settings.kafka.topic); written by producers, not by Dagster.",
    group_name=GROUP,
    kinds={"kafka"},
)


@dg.multi_asset(
    name="ingest",
    specs=[
        dg.AssetSpec(
            "bronze_events",
            deps=[user_actions_topic],
            description="bronze/events: every valid Kafka record exactly once, with its partition and offset.",
            group_name=GROUP,
            kinds={"delta", "spark"},
        ),
        dg.AssetSpec(
            "quarantine_events",
            deps=[user_actions_topic],
            description="quarantine/events: every invalid Kafka record exactly once, with a reason.",
            group_name=GROUP,
            kinds={"delta", "spark"},
        ),
        dg.AssetSpec(
            "silver_events",
            deps=["bronze_events"],
            description="silver/events: bronze deduplicated by event_id, ordered by (user, ts).",
            group_name=GROUP,
            kinds={"delta"},
        ),
    ],
)
def ingest(
    context: AssetExecutionContext, streamrec: StreamrecResource, steps: StepRunner
) -> Iterator[dg.MaterializeResult]:
    """`streamrec ingest --until-idle`: everything on the topic now lands in bronze/quarantine and silver."""
    settings = streamrec.settings()
    outcome = steps.ingest(settings, context.log.info)
    stats = outcome.summary
    ends = topic_ends(settings)
    bronze = {
        **table_metadata(settings, BRONZE_TABLE),
        **outcome.metadata(),
        "records_read": stats.get("records"),
        "records_valid": stats.get("valid"),
        "kafka_topic": settings.kafka.topic,
        "kafka_high_watermarks": {str(partition): offset for partition, offset in sorted(ends.items())},
    }
    quarantine = {**table_metadata(settings, QUARANTINE_TABLE), "records_invalid": stats.get("invalid")}
    silver = {
        **silver_metadata(settings, SILVER_TABLE, SILVER_APP_ID, BRONZE_TABLE),
        "rows_added": stats.get("silver_added"),
    }
    for key, metadata in (("bronze_events", bronze), ("quarantine_events", quarantine), ("silver_events", silver)):
        yield dg.MaterializeResult(
            asset_key=key, metadata=metadata, data_version=data_version(metadata["delta_version"])
        )

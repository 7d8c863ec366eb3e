"""Feature assets: one incremental feature build brings item_vocab, user_sequences and item_stats up to date."""

# No `from __future__ import annotations`: Dagster reads the context and resource annotations at definition.
from collections.abc import Iterator

import dagster as dg
from dagster import AssetExecutionContext
from pydantic import Field

from features.tables import ITEM_STATS_TABLE, ITEM_VOCAB_TABLE, USER_SEQUENCES_TABLE
from workflows.lineage import data_version, feature_table_metadata
from workflows.resources import StepRunner, StreamrecResource

GROUP = "features"
TABLES = {"item_vocab": ITEM_VOCAB_TABLE, "user_sequences": USER_SEQUENCES_TABLE, "item_stats": ITEM_STATS_TABLE}


class FeatureBuildConfig(dg.Config):
    """How the feature tables catch up with silver."""

    full_rebuild: bool = Field(
        default=False, description="Rebuild every table from the latest silver version (Spark), not incrementally."
    )


@dg.multi_asset(
    name="feature_build",
    specs=[
        dg.AssetSpec(
            "item_vocab",
            deps=["silver_events"],
            description="features/item_vocab: item_id -> dense index, append-only.",
            group_name=GROUP,
            kinds={"delta"},
        ),
        dg.AssetSpec(
            "user_sequences",
            deps=["silver_events", "item_vocab"],
            description="features/user_sequences: per user the last max_len events, in event order.",
            group_name=GROUP,
            kinds={"delta"},
        ),
        dg.AssetSpec(
            "item_stats",
            deps=["silver_events", "item_vocab"],
            description="features/item_stats: per item a count per action, first and last seen.",
            group_name=GROUP,
            kinds={"delta"},
        ),
    ],
)
def feature_build(
    context: AssetExecutionContext, config: FeatureBuildConfig, streamrec: StreamrecResource, steps: StepRunner
) -> Iterator[dg.MaterializeResult]:
    """`streamrec features build --incremental` (a full build when an incremental one cannot be
    done, or when the config asks for one: the backfill after a change to the feature code)."""
    settings = streamrec.settings()
    outcome = steps.build_features(settings, context.log.info, full=config.full_rebuild)
    summary = outcome.summary
    written = summary.get("rows_written", {})
    for key, table in TABLES.items():
        metadata = {**feature_table_metadata(settings, table), **outcome.metadata(), "build_mode": summary.get("mode")}
        if table in written:
            metadata["rows_written"] = written[table]
        if summary.get("fallback_reason"):
            metadata["full_build_because"] = summary["fallback_reason"]
        yield dg.MaterializeResult(
            asset_key=key, metadata=metadata, data_version=data_version(metadata["delta_version"])
        )

"""Feature assets: one incremental feature build brings item_vocab, user_sequences and item_stats up to date;
``ranking_examples`` is the same build with a RankingSpec (features/ranking_examples too)."""

# No `from __future__ import annotations`: Dagster reads the context and resource annotations at definition.
from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext
from pydantic import Field

from features.tables import (
    ITEM_STATS_TABLE,
    ITEM_VOCAB_TABLE,
    RANKING_EXAMPLES_TABLE,
    USER_SEQUENCES_TABLE,
    ranking_state,
)
from infra.settings import Settings
from workflows.lineage import data_version, delta_version, feature_table_metadata, split_rows
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


class RankingExamplesConfig(dg.Config):
    """How features/ranking_examples is built (``features.ranking.RankingSpec``; docs/ranking.md)."""

    full_rebuild: bool = Field(
        default=False, description="Rebuild every table from the latest silver version (Spark), not incrementally."
    )
    window_s: int = Field(default=3600, ge=0, description="Label window after an exposure, in seconds.")
    max_len: int = Field(default=50, ge=1, description="History events kept per example.")


@dg.asset(
    deps=["silver_events", "item_vocab"],
    group_name=GROUP,
    kinds={"delta"},
    description="features/ranking_examples: one row per exposure, its history, a label per task and a time split.",
)
def ranking_examples(
    context: AssetExecutionContext, config: RankingExamplesConfig, streamrec: StreamrecResource, steps: StepRunner
) -> dg.MaterializeResult:
    """`streamrec features build --incremental --ranking`: the feature build with a RankingSpec
    (the other feature tables catch up too; their versions are in the metadata)."""
    from features.ranking import RankingSpec

    settings = streamrec.settings()
    spec = RankingSpec(window_ms=config.window_s * 1000, max_len=config.max_len)
    outcome = steps.build_features(settings, context.log.info, full=config.full_rebuild, ranking=spec)
    summary = outcome.summary
    metadata = {
        **feature_table_metadata(settings, RANKING_EXAMPLES_TABLE),
        **outcome.metadata(),
        "build_mode": summary.get("mode"),
    }
    written = summary.get("rows_written", {})
    if RANKING_EXAMPLES_TABLE in written:
        metadata["rows_written"] = written[RANKING_EXAMPLES_TABLE]
    if summary.get("fallback_reason"):
        metadata["full_build_because"] = summary["fallback_reason"]
    metadata.update(ranking_build_metadata(settings))
    return dg.MaterializeResult(metadata=metadata, data_version=data_version(metadata["delta_version"]))


def ranking_build_metadata(settings: Settings) -> dict[str, Any]:
    """What the last ranking_examples build recorded (window, split boundaries, watermark; its
    silver_version is in ``feature_table_metadata``), its rows per split, and the Delta version
    of every feature table after the build (``version.features/<table>``)."""
    found: dict[str, Any] = {}
    state = ranking_state(settings.table_uri(RANKING_EXAMPLES_TABLE))
    if state is not None:
        found.update(
            window_ms=state.window_ms,
            validation_from_ts=state.validation_from_ts,
            test_from_ts=state.test_from_ts,
            watermark_ts=state.watermark_ts,
        )
    found.update({f"rows.{split}": rows for split, rows in split_rows(settings, RANKING_EXAMPLES_TABLE).items()})
    for table in (*TABLES.values(), RANKING_EXAMPLES_TABLE):
        found[f"version.{table}"] = delta_version(settings, table)
    return found

"""Jobs over the assets (each runs the asset checks of what it materialises)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from infra.dagster_automation import BATCH_SLOT, FOLLOW_SLOT, STOPS_WITH_LOOP_TAG
from workflows.assets import (
    feature_build,
    ingest,
    ranking_examples,
    ranking_model,
    ranking_promotion,
    retrieval_evaluation,
    retrieval_model,
    retrieval_promotion,
)
from workflows.assets.training import RetrievalTrainConfig
from workflows.follow import follow_loop
from workflows.rounds import FULL_RETRAIN_TRAIN, WARM_START_TRAIN

if TYPE_CHECKING:  # what define_asset_job returns; not exported by dagster
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

ingest_job = dg.define_asset_job(
    "ingest_job",
    tags=BATCH_SLOT,
    selection=dg.AssetSelection.assets(ingest),
    description="Ingest until idle: the topic's records into bronze/quarantine and silver.",
)

features_job = dg.define_asset_job(
    "features_job",
    tags=BATCH_SLOT,
    selection=dg.AssetSelection.assets(feature_build),
    description="Incremental feature build from the latest silver version.",
)

warm_start_training_job = dg.define_asset_job(
    "warm_start_training_job",
    tags=BATCH_SLOT,
    selection=dg.AssetSelection.assets(retrieval_model),
    config=dg.RunConfig(ops={"retrieval_model": RetrievalTrainConfig(train=WARM_START_TRAIN)}),
    description="A short run that continues the production model on the latest features.",
)

full_retraining_job = dg.define_asset_job(
    "full_retraining_job",
    tags=BATCH_SLOT,
    selection=dg.AssetSelection.assets(retrieval_model),
    config=dg.RunConfig(ops={"retrieval_model": RetrievalTrainConfig(from_scratch=True, train=FULL_RETRAIN_TRAIN)}),
    description="Training from scratch on the latest features.",
)

promotion_job = dg.define_asset_job(
    "promotion_job",
    tags=BATCH_SLOT,
    selection=dg.AssetSelection.assets(retrieval_evaluation, retrieval_promotion),
    description="Evaluate a candidate against production on the same data, then the promotion gate.",
)

loop_job = dg.define_asset_job(
    "loop_job",
    tags=BATCH_SLOT,
    selection=dg.AssetSelection.assets(
        ingest, feature_build, retrieval_model, retrieval_evaluation, retrieval_promotion
    ),
    config=dg.RunConfig(ops={"retrieval_model": RetrievalTrainConfig(train=WARM_START_TRAIN)}),
    description="One round of the loop: ingest, features, warm-start training, evaluation and the gate.",
)

ranking_job = dg.define_asset_job(
    "ranking_job",
    tags=BATCH_SLOT,
    selection=dg.AssetSelection.assets(ranking_examples, ranking_model, ranking_promotion),
    description="The ranking model: ranking examples from the latest silver version, a ranker trained from "
    "scratch on Ray Train, then its gate (validation click AUC against the production ranker).",
)


@dg.job(
    description="The follow loop (`streamrec train --follow`) as a long-running run: it learns from every new "
    "silver/events version and publishes model deltas until the run is terminated or production moves; "
    "follow_sensor keeps one running while the loop is on.",
    tags={STOPS_WITH_LOOP_TAG: "true", **FOLLOW_SLOT},
)
def follow_job() -> None:
    follow_loop()


ALL_JOBS: list[dg.JobDefinition | UnresolvedAssetJobDefinition] = [  # asset jobs and the follow job's op job
    ingest_job,
    features_job,
    warm_start_training_job,
    full_retraining_job,
    promotion_job,
    loop_job,
    ranking_job,
    follow_job,
]

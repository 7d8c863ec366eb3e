"""Dagster assets of the streamrec loop, one module per stage.

ingestion: the Kafka topic (external) -> bronze_events, quarantine_events, silver_events
features: item_vocab, user_sequences, item_stats; ranking_examples
training: retrieval_model; ranking_model; scaling_sweep (materialised by hand)
promotion: retrieval_evaluation -> retrieval_promotion; ranking_promotion
"""

import dagster as dg

from workflows.assets.features import feature_build, ranking_examples
from workflows.assets.ingestion import ingest, user_actions_topic
from workflows.assets.promotion import ranking_promotion, retrieval_evaluation, retrieval_promotion
from workflows.assets.sweep import scaling_sweep
from workflows.assets.training import ranking_model, retrieval_model

ALL_ASSETS: list[dg.AssetsDefinition | dg.AssetSpec] = [
    user_actions_topic,
    ingest,
    feature_build,
    retrieval_model,
    retrieval_evaluation,
    retrieval_promotion,
    ranking_examples,
    ranking_model,
    ranking_promotion,
    scaling_sweep,
]

__all__ = [
    "ALL_ASSETS",
    "feature_build",
    "ingest",
    "ranking_examples",
    "ranking_model",
    "ranking_promotion",
    "retrieval_evaluation",
    "retrieval_model",
    "retrieval_promotion",
    "scaling_sweep",
    "user_actions_topic",
]

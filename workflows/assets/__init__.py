"""Dagster assets of the streamrec loop, one module per stage.

ingestion: the Kafka topic (external) -> bronze_events, quarantine_events, silver_events
features: item_vocab, user_sequences, item_stats
training: retrieval_model
promotion: retrieval_evaluation -> retrieval_promotion

``ranking_examples`` and a ranking model do not exist yet in the packages below, so they have
no assets; they join the graph (features -> training -> promotion) when they do.
"""

import dagster as dg

from workflows.assets.features import feature_build
from workflows.assets.ingestion import ingest, user_actions_topic
from workflows.assets.promotion import retrieval_evaluation, retrieval_promotion
from workflows.assets.training import retrieval_model

ALL_ASSETS: list[dg.AssetsDefinition | dg.AssetSpec] = [
    user_actions_topic,
    ingest,
    feature_build,
    retrieval_model,
    retrieval_evaluation,
    retrieval_promotion,
]

__all__ = [
    "ALL_ASSETS",
    "feature_build",
    "ingest",
    "retrieval_evaluation",
    "retrieval_model",
    "retrieval_promotion",
    "user_actions_topic",
]

"""A tiny lake and base model for the follow job's unit tests: silver/events as ingestion writes
them, the first feature tables from the incremental build's Arrow transforms (no Spark), later
silver versions through the real incremental build; a random base model over the vocabulary."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from deltalake import DeltaTable, write_deltalake
from lakedata import silver_table

from features import arrow_jobs
from features.build import build
from features.reader import latest_versions
from features.tables import (
    ITEM_STATS_SCHEMA,
    ITEM_STATS_TABLE,
    ITEM_VOCAB_SCHEMA,
    ITEM_VOCAB_TABLE,
    USER_SEQUENCES_TABLE,
    build_record,
)
from infra.settings import Settings, get_settings
from ingestion.schema import SILVER_TABLE
from training.common.config import EncoderConfig
from training.retrieval.config import TrainConfig
from training.retrieval.io import ModelInfo
from training.retrieval.model import RetrievalModel
from training.streaming.follow import FollowBase

ENCODER = EncoderConfig(kind="sasrec", dim=8, num_blocks=1, num_heads=1, max_len=12, dropout=0.0, ffn_dim=8)
CONFIG = TrainConfig(encoder=ENCODER, batch_size=8, num_negatives=8, in_batch_negatives=4, loss="sampled_logq")
START_MS = 1_700_000_000_000
ACTIONS = ("click", "view", "impression", "like", "skip")


def lake_settings(home: Path, **overrides: Any) -> Settings:
    return get_settings(home=home, features_max_len=20, **overrides)


def events(users: Iterable[int], items: Iterable[int], start_ms: int, tag: str) -> list[dict[str, Any]]:
    """One event per (user, item) pair in turn, a second apart, ``tag`` in the event ids."""
    found = []
    for step, (user, item) in enumerate(zip(users, items, strict=True)):
        found.append(
            {
                "event_id": f"{tag}-{step}",
                "user_id": f"u{user}",
                "item_id": f"i{item}",
                "action": ACTIONS[step % len(ACTIONS)],
                "ts": start_ms + 1000 * step,
            }
        )
    return found


def history(users: int = 12, per_user: int = 10, items: int = 30) -> list[dict[str, Any]]:
    """The events before the base: ``users`` users with ``per_user`` events over ``items`` items."""
    pairs = [(user, (user * 7 + step * 3) % items) for user in range(users) for step in range(per_user)]
    return events([u for u, _ in pairs], [i for _, i in pairs], START_MS, "h")


def append_silver(settings: Settings, rows: list[dict[str, Any]], first_offset: int) -> int:
    """Append contract events to silver/events as ingestion does; returns the new silver version."""
    write_deltalake(
        settings.table_uri(SILVER_TABLE), silver_table(rows, first_offset), mode="append", partition_by=["event_date"]
    )
    return DeltaTable(settings.table_uri(SILVER_TABLE)).version()


def first_build(settings: Settings, rows: list[dict[str, Any]]) -> None:
    """Silver version 0 and the feature tables built from it with the incremental build's transforms."""
    silver = append_silver(settings, rows, 0)
    table = DeltaTable(settings.table_uri(SILVER_TABLE)).to_pyarrow_table()
    vocab = arrow_jobs.new_items(table, ITEM_VOCAB_SCHEMA.empty_table())
    record = build_record(silver, settings.features.max_len)
    write_deltalake(settings.table_uri(ITEM_VOCAB_TABLE), vocab, mode="append", commit_properties=record)
    indexed = arrow_jobs.with_item_index(table, vocab)
    sequences = arrow_jobs.sequences_from_events(indexed, settings.features.max_len)
    write_deltalake(settings.table_uri(USER_SEQUENCES_TABLE), sequences, mode="append", commit_properties=record)
    stats = arrow_jobs.add_stats(ITEM_STATS_SCHEMA.empty_table(), arrow_jobs.stats_of_events(table), vocab)
    write_deltalake(settings.table_uri(ITEM_STATS_TABLE), stats, mode="append", commit_properties=record)


def history_lake(home: Path) -> Settings:
    """A lake in ``home`` whose silver version 0 and first feature tables hold ``history()``."""
    settings = lake_settings(home)
    first_build(settings, history())
    return settings


def build_features(settings: Settings) -> None:
    """The real incremental feature build (Arrow) up to silver's latest version."""
    build(settings, incremental=True, log=lambda message: None)


def base_model(settings: Settings, version: int = 1, seed: int = 0) -> FollowBase:
    """A random RetrievalModel over the vocabulary the latest feature tables hold, as version ``version``."""
    versions = latest_versions(settings)
    vocab = DeltaTable(settings.table_uri(ITEM_VOCAB_TABLE), version=versions.item_vocab).to_pyarrow_table()
    num_items = int(pa.compute.max(vocab.column("item_index")).as_py())
    torch.manual_seed(seed)
    model = RetrievalModel(ENCODER, num_items)
    info = ModelInfo(encoder=ENCODER, num_items=num_items, feature_versions=versions.as_dict())
    return FollowBase(version, info, {key: value.clone() for key, value in model.state_dict().items()})

"""The feature tables: names, Arrow schemas, and the build state recorded in each commit.

Every write to a feature table carries two Delta app transactions in the same atomic
commit: the silver/events version the table now reflects, and the ``max_len`` it was built
with. A build reads them back to know where to resume, so a crashed build re-runs safely.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction

from ingestion.schema import ACTIONS

ITEM_VOCAB_TABLE = "features/item_vocab"
USER_SEQUENCES_TABLE = "features/user_sequences"
ITEM_STATS_TABLE = "features/item_stats"
RANKING_EXAMPLES_TABLE = "features/ranking_examples"

SILVER_VERSION_APP = "streamrec.features.silver_version"
MAX_LEN_APP = "streamrec.features.max_len"
RANKING_WINDOW_APP = "streamrec.features.ranking_window_ms"
RANKING_VALIDATION_FROM_APP = "streamrec.features.ranking_validation_from_ts"
RANKING_TEST_FROM_APP = "streamrec.features.ranking_test_from_ts"
RANKING_WATERMARK_APP = "streamrec.features.ranking_watermark_ts"

ITEM_VOCAB_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("item_index", pa.int64(), nullable=False),
        pa.field("first_seen_ts", pa.int64(), nullable=False),
    ]
)
"""features/item_vocab: item_id -> dense index from 1 (0 = padding); append-only."""

USER_SEQUENCES_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_indices", pa.list_(pa.field("element", pa.int64(), nullable=False)), nullable=False),
        pa.field("actions", pa.list_(pa.field("element", pa.string(), nullable=False)), nullable=False),
        pa.field("timestamps", pa.list_(pa.field("element", pa.int64(), nullable=False)), nullable=False),
    ]
)
"""features/user_sequences: per user the last max_len events, in event order."""

STAT_COLUMNS: tuple[str, ...] = tuple(f"{action}_count" for action in ACTIONS)
"""One count column per action type in features/item_stats, in ACTIONS order."""

ITEM_STATS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("item_index", pa.int64(), nullable=False),
        *[pa.field(name, pa.int64(), nullable=False) for name in STAT_COLUMNS],
        pa.field("first_seen_ts", pa.int64(), nullable=False),
        pa.field("last_seen_ts", pa.int64(), nullable=False),
    ]
)
"""features/item_stats: per item the number of events of each action, first/last seen ts."""


RANKING_TASKS: dict[str, tuple[str, ...]] = {
    "click": ("click", "view"),
    "like": ("like", "share"),
    "purchase": ("purchase",),
    "skip": ("skip",),
    "dislike": ("dislike",),
}
"""Ranking tasks and the actions that make each one's label positive (see features.ranking)."""
POSITIVE_TASKS: tuple[str, ...] = ("click", "like", "purchase")
NEGATIVE_TASKS: tuple[str, ...] = ("skip", "dislike")
LABEL_COLUMNS: tuple[str, ...] = tuple(f"label_{task}" for task in RANKING_TASKS)
SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")

_HISTORY_FIELDS = [
    pa.field("item_indices", pa.list_(pa.field("element", pa.int64(), nullable=False)), nullable=False),
    pa.field("actions", pa.list_(pa.field("element", pa.string(), nullable=False)), nullable=False),
    pa.field("timestamps", pa.list_(pa.field("element", pa.int64(), nullable=False)), nullable=False),
]

RANKING_ROWS_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("kafka_partition", pa.int32(), nullable=False),
        pa.field("kafka_offset", pa.int64(), nullable=False),
        pa.field("item_index", pa.int64(), nullable=False),
        pa.field("anchor_action", pa.string(), nullable=False),
        *_HISTORY_FIELDS,
        *[pa.field(name, pa.bool_(), nullable=False) for name in LABEL_COLUMNS],
    ]
)
"""ranking_examples rows before the split column is assigned (what the Spark job returns)."""

RANKING_EXAMPLES_SCHEMA = pa.schema([*RANKING_ROWS_SCHEMA, pa.field("split", pa.string(), nullable=False)])
"""features/ranking_examples: one row per exposure (an impression, or an action on an item
not shown within the window before it), the user's history strictly before its ts, the
candidate item, a label per task from the window after it, and a time split."""


def build_record(silver_version: int, max_len: int) -> CommitProperties:
    """Commit properties recording the silver version and max_len a write reflects."""
    return CommitProperties(
        app_transactions=[Transaction(SILVER_VERSION_APP, silver_version), Transaction(MAX_LEN_APP, max_len)]
    )


def recorded_state(uri: str, version: int | None = None) -> tuple[int, int] | None:
    """(silver version, max_len) recorded by the last build of the table at ``uri``, or None."""
    if not DeltaTable.is_deltatable(uri):
        return None
    table = DeltaTable(uri, version=version)
    silver_version = table.transaction_version(SILVER_VERSION_APP)
    max_len = table.transaction_version(MAX_LEN_APP)
    if silver_version is None or max_len is None:
        return None
    return silver_version, max_len


@dataclass(frozen=True)
class RankingState:
    """What the last build of features/ranking_examples recorded in its commit."""

    silver_version: int
    max_len: int
    window_ms: int
    validation_from_ts: int
    test_from_ts: int
    watermark_ts: int  # largest event ts in silver at ``silver_version``


def ranking_record(state: RankingState) -> CommitProperties:
    """Commit properties recording a ranking_examples build (``recorded_state`` reads the first two)."""
    values = {
        SILVER_VERSION_APP: state.silver_version,
        MAX_LEN_APP: state.max_len,
        RANKING_WINDOW_APP: state.window_ms,
        RANKING_VALIDATION_FROM_APP: state.validation_from_ts,
        RANKING_TEST_FROM_APP: state.test_from_ts,
        RANKING_WATERMARK_APP: state.watermark_ts,
    }
    return CommitProperties(app_transactions=[Transaction(app, value) for app, value in values.items()])


def ranking_state(uri: str, version: int | None = None) -> RankingState | None:
    """The RankingState recorded by the last build of the ranking table at ``uri``, or None."""
    if not DeltaTable.is_deltatable(uri):
        return None
    table = DeltaTable(uri, version=version)
    apps = (
        SILVER_VERSION_APP, MAX_LEN_APP, RANKING_WINDOW_APP, RANKING_VALIDATION_FROM_APP,
        RANKING_TEST_FROM_APP, RANKING_WATERMARK_APP,
    )  # fmt: skip
    values = [table.transaction_version(app) for app in apps]
    if any(value is None for value in values):
        return None
    return RankingState(*(int(value) for value in values))  # type: ignore[arg-type]


def rows_with(column: str, values: pa.Array | pa.ChunkedArray) -> pc.Expression:
    """A dataset filter keeping rows whose string ``column`` is one of ``values``.

    The column is cast to string first: delta-rs MERGE writes strings as string_view, and
    pyarrow cannot compare string statistics of such files with a string value set.
    """
    if isinstance(values, pa.ChunkedArray):  # one with no chunks would turn into a null-typed set
        values = values.combine_chunks()
    return pc.field(column).cast(pa.string()).isin(values.cast(pa.string()))

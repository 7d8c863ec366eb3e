"""The feature tables: names, Arrow schemas, and the build state recorded in each commit.

Every write to a feature table carries two Delta app transactions in the same atomic
commit: the silver/events version the table now reflects, and the ``max_len`` it was built
with. A build reads them back to know where to resume, so a crashed build re-runs safely.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction

from ingestion.schema import ACTIONS

ITEM_VOCAB_TABLE = "features/item_vocab"
USER_SEQUENCES_TABLE = "features/user_sequences"
ITEM_STATS_TABLE = "features/item_stats"

SILVER_VERSION_APP = "streamrec.features.silver_version"
MAX_LEN_APP = "streamrec.features.max_len"

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


def rows_with(column: str, values: pa.Array | pa.ChunkedArray) -> pc.Expression:
    """A dataset filter keeping rows whose string ``column`` is one of ``values``.

    The column is cast to string first: delta-rs MERGE writes strings as string_view, and
    pyarrow cannot compare string statistics of such files with a string value set.
    """
    if isinstance(values, pa.ChunkedArray):  # one with no chunks would turn into a null-typed set
        values = values.combine_chunks()
    return pc.field(column).cast(pa.string()).isin(values.cast(pa.string()))

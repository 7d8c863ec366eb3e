"""The full-build feature transforms, as Spark DataFrame jobs over silver events.

``events`` is silver/events (at least ``silver.EVENT_COLUMNS``); ``vocab`` is
features/item_vocab. Every function returns a DataFrame with the columns of its table
(``ranking_examples``: all but the split, which the driver assigns).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from features.tables import STAT_COLUMNS
from ingestion.schema import ACTIONS, EVENT_ORDER

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame


def unseen_items(events: DataFrame, vocab: DataFrame) -> DataFrame:
    """Items of ``events`` missing from ``vocab``: item_id and ts, the first time each was seen.

    Indices are assigned on the driver (``arrow_jobs.new_items``), which collects these new
    items anyway to append them to the vocabulary.
    """
    from pyspark.sql import functions as F

    first = events.groupBy("item_id").agg(F.min("ts").alias("ts"))
    return first.join(vocab.select("item_id"), "item_id", "left_anti")


def user_sequences(events: DataFrame, vocab: DataFrame, max_len: int) -> DataFrame:
    """Per user the last ``max_len`` events in EVENT_ORDER: item_indices, actions, timestamps."""
    from pyspark.sql import functions as F

    order_keys = [name for name in EVENT_ORDER if name != "user_id"]
    indexed = events.join(vocab.select("item_id", "item_index"), "item_id")
    # Structs sort field by field: (ts, kafka_partition, kafka_offset) is the event order.
    grouped = indexed.groupBy("user_id").agg(
        F.sort_array(F.collect_list(F.struct(*order_keys, "item_index", "action"))).alias("events")
    )
    start = F.greatest(F.size("events") - F.lit(max_len - 1), F.lit(1))
    window = F.slice("events", start, F.lit(max_len))
    return grouped.select(
        "user_id",
        window.getField("item_index").alias("item_indices"),
        window.getField("action").alias("actions"),
        window.getField("ts").alias("timestamps"),
    )


def item_stats(events: DataFrame, vocab: DataFrame) -> DataFrame:
    """Per item: the number of events of each action (STAT_COLUMNS), first and last seen ts."""
    from pyspark.sql import functions as F

    counts = [
        F.count(F.when(F.col("action") == action, True)).cast("long").alias(name)
        for action, name in zip(ACTIONS, STAT_COLUMNS, strict=True)
    ]
    stats = events.groupBy("item_id").agg(
        *counts, F.min("ts").alias("first_seen_ts"), F.max("ts").alias("last_seen_ts")
    )
    return stats.join(vocab.select("item_id", "item_index"), "item_id")


def ranking_examples(events: DataFrame, vocab: DataFrame, window_ms: int, max_len: int, partitions: int) -> DataFrame:
    """features/ranking_examples rows (``RANKING_ROWS_SCHEMA``, no split column) of every exposure.

    Exposures, labels and histories are sequential per user (``features.ranking``), so the
    events are repartitioned by user and every partition runs the vectorised Arrow kernel
    ``ranking.ranking_rows`` once over all of its users (``mapInArrow``): the same code the
    incremental build runs in the driver.
    """
    from pyspark.sql.pandas.types import from_arrow_schema

    from features.ranking import KERNEL_COLUMNS
    from features.tables import RANKING_ROWS_SCHEMA

    indexed = events.join(vocab.select("item_id", "item_index"), "item_id").select(*KERNEL_COLUMNS)

    def kernel(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        from features.ranking import ranking_rows

        received = list(batches)
        if not received:
            return
        rows = ranking_rows(pa.Table.from_batches(received), window_ms, max_len)
        yield from rows.to_batches()

    return indexed.repartition(partitions, "user_id").mapInArrow(kernel, from_arrow_schema(RANKING_ROWS_SCHEMA))

"""The incremental silver table, kept from bronze by the ingest stream.

Bronze and quarantine appends go through ``infra.lake.append_once``: the ingest stream uses
one app id per stream (derived from the Spark query id kept in its checkpoint) and the
micro-batch id as version, so a batch replayed after a crash is written at most once to
bronze and to quarantine, whichever of the two writes it had reached.

Silver is derived from bronze alone: its app transaction records the bronze version it
has caught up with. Catching up reads the rows of the bronze files added since that
version, keeps the earliest Kafka record of each event_id (by ingestion time, partition,
offset), drops event_ids silver already holds, sorts the rest by ``EVENT_ORDER`` and
appends them in one commit that also records the new bronze version. Silver is never
rewritten: its rows only grow, so readers can follow it incrementally too.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

from infra.lake import append_once, committed_version, rows_between
from ingestion.schema import EVENT_ORDER, SILVER_SCHEMA

PARTITION_BY = ["event_date"]
SILVER_APP_ID = "streamrec-silver"
EVENT_COLUMNS = ("event_id", "user_id", "item_id", "action", "ts", "dwell_ms", "surface")  # of a contract event
_FIRST_RECORD_ORDER = [("ingested_at", "ascending"), ("kafka_partition", "ascending"), ("kafka_offset", "ascending")]


def as_silver(rows: pa.Table) -> pa.Table:
    """``rows`` (silver's columns, any order) in silver's schema and row order (``EVENT_ORDER``)."""
    return rows.select(SILVER_SCHEMA.names).cast(SILVER_SCHEMA).sort_by([(name, "ascending") for name in EVENT_ORDER])


def silver_rows_of(events: Iterable[Mapping[str, Any]], first_offset: int = 0, partitions: int = 4) -> pa.Table:
    """Silver rows of contract events, as if sent to a topic of ``partitions`` partitions keyed by
    user (a CRC32 of the user id stands in for Kafka's key hash) at offsets from ``first_offset``
    in event order, ingested now: for replays, tests and benchmarks that bypass Kafka."""
    ingested = dt.datetime.now(dt.UTC)
    rows = [
        {
            **{name: event.get(name) for name in EVENT_COLUMNS},
            "kafka_partition": zlib.crc32(str(event["user_id"]).encode()) % partitions,
            "kafka_offset": offset,
            "ingested_at": ingested,
            "event_date": dt.datetime.fromtimestamp(event["ts"] / 1000, dt.UTC).date(),
        }
        for offset, event in enumerate(events, start=first_offset)
    ]
    return as_silver(pa.Table.from_pylist(rows, schema=SILVER_SCHEMA))


def append_silver(uri: str, rows: pa.Table) -> int:
    """Append ``rows`` to the silver table at ``uri`` as ingestion does (schema, order,
    partitioning), without an app transaction: for replays into the lake, tests and
    benchmarks that bypass Kafka. Returns the new version."""
    write_deltalake(uri, as_silver(rows), mode="append", partition_by=PARTITION_BY)
    return DeltaTable(uri).version()


@dataclass(frozen=True)
class SilverUpdate:
    """What one catch-up did: bronze rows read, silver rows added, versions reached."""

    bronze_version: int | None
    silver_version: int | None
    rows_read: int = 0
    rows_added: int = 0


class SilverMaintainer:
    """Keeps ``silver/events`` = ``bronze/events`` deduplicated by event_id, incrementally.

    The event_ids silver holds are cached between catch-ups (and reloaded when silver
    changed behind our back), so a catch-up costs time in the size of the new bronze rows
    plus one hash probe over the cached ids.
    """

    def __init__(self, bronze_uri: str, silver_uri: str) -> None:
        self.bronze_uri = bronze_uri
        self.silver_uri = silver_uri
        self._ids: list[pa.Array] = []
        self._ids_version: int | None = None

    def caught_up(self) -> bool:
        """Whether silver has every bronze version."""
        if not DeltaTable.is_deltatable(self.bronze_uri):
            return True
        done = committed_version(self.silver_uri, SILVER_APP_ID)
        return done is not None and done >= DeltaTable(self.bronze_uri).version()

    def catch_up(self) -> SilverUpdate:
        """Append to silver what bronze gained since the version silver records."""
        if not DeltaTable.is_deltatable(self.bronze_uri):
            return SilverUpdate(None, None)
        bronze = DeltaTable(self.bronze_uri)
        bronze_version = bronze.version()
        done = committed_version(self.silver_uri, SILVER_APP_ID)
        if done is not None and done >= bronze_version:
            return SilverUpdate(bronze_version, DeltaTable(self.silver_uri).version())
        read = rows_between(self.bronze_uri, done, bronze_version, SILVER_SCHEMA.names)[0]  # bronze: append-only
        fresh = _earliest_per_event(read)
        fresh = fresh.filter(pc.invert(pc.is_in(fresh["event_id"], value_set=self._known_ids(fresh["event_id"]))))
        fresh = as_silver(fresh)
        before = DeltaTable(self.silver_uri).version() if DeltaTable.is_deltatable(self.silver_uri) else None
        append_once(self.silver_uri, fresh, SILVER_APP_ID, bronze_version, PARTITION_BY)
        after = DeltaTable(self.silver_uri).version()
        if self._ids_version == before and after == (before + 1 if before is not None else 0):
            self._ids.append(fresh["event_id"].combine_chunks())
            if len(self._ids) > 64:
                self._ids = [pa.concat_arrays(self._ids)]
            self._ids_version = after
        return SilverUpdate(bronze_version, after, rows_read=read.num_rows, rows_added=fresh.num_rows)

    def _known_ids(self, candidates: pa.ChunkedArray) -> pa.Array:
        """The ``candidates`` silver already holds (probes the cached silver ids)."""
        version = DeltaTable(self.silver_uri).version() if DeltaTable.is_deltatable(self.silver_uri) else None
        if version != self._ids_version:
            self._ids = [] if version is None else [_read_ids(self.silver_uri, version)]
            self._ids_version = version
        wanted = pc.unique(candidates.combine_chunks() if isinstance(candidates, pa.ChunkedArray) else candidates)
        found = [ids.filter(pc.is_in(ids, value_set=wanted)) for ids in self._ids if len(ids)]
        return pa.concat_arrays(found) if found else pa.array([], pa.string())


def _read_ids(uri: str, version: int) -> pa.Array:
    ids = DeltaTable(uri, version=version).to_pyarrow_dataset().to_table(columns=["event_id"])["event_id"]
    return ids.combine_chunks() if ids.num_chunks else pa.array([], pa.string())


def _earliest_per_event(rows: pa.Table) -> pa.Table:
    """One row per event_id: the earliest Kafka record (ingestion time, partition, offset)."""
    if rows.num_rows == 0:
        return rows
    rows = rows.sort_by(_FIRST_RECORD_ORDER)
    rows = rows.append_column("_row", pa.array(np.arange(rows.num_rows)))
    first = rows.group_by("event_id", use_threads=False).aggregate([("_row", "min")])["_row_min"]
    return rows.take(first).drop_columns(["_row"])

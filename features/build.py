"""`streamrec features build`: item_vocab, user_sequences, item_stats (and, when asked,
ranking_examples) from silver/events.

Full build (Spark): reads silver at its latest version, appends unseen items to the
vocabulary, and overwrites user_sequences and item_stats. Incremental build (Arrow): reads
only the silver rows added since the version each table recorded, appends their new items,
and MERGEs the rebuilt rows of the users and items they touch. Each write records the silver
version and max_len in its commit (``features.tables.build_record``), so a crashed build
re-runs from where each table stopped. See docs/features.md.

``ranking_examples`` (``build(..., ranking=RankingSpec())``, docs/ranking.md) is built last:
a full build runs the exposure kernel in Spark; an incremental build rebuilds, from all
silver rows of each user with new events, only that user's rows from (earliest new event -
window) on, and MERGEs them (rows that no longer exist deleted in the same commit).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError

from features import arrow_jobs, ranking
from features.ranking import RankingSpec
from features.silver import EVENT_COLUMNS, SilverChanges, rows_of_users, silver_changes
from features.tables import (
    ITEM_STATS_SCHEMA,
    ITEM_STATS_TABLE,
    ITEM_VOCAB_SCHEMA,
    ITEM_VOCAB_TABLE,
    RANKING_EXAMPLES_SCHEMA,
    RANKING_EXAMPLES_TABLE,
    RANKING_ROWS_SCHEMA,
    USER_SEQUENCES_SCHEMA,
    USER_SEQUENCES_TABLE,
    RankingState,
    build_record,
    ranking_record,
    ranking_state,
    recorded_state,
    rows_with,
)
from infra.errors import StreamrecError
from infra.lake import table_version
from infra.settings import Settings
from ingestion.schema import SILVER_TABLE

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

FEATURE_TABLES = (ITEM_VOCAB_TABLE, USER_SEQUENCES_TABLE, ITEM_STATS_TABLE)
Log = Callable[[str], None]


class ConcurrentBuildError(StreamrecError):
    """Another feature build committed a table this build read first; this build wrote nothing there."""


@dataclass(frozen=True)
class TableUpdate:
    """What a build did to one feature table."""

    table: str
    version: int  # the table's version after the build
    rows: int  # rows appended, merged or written
    written: bool  # False when the table was already up to date


@dataclass
class BuildReport:
    """The silver version a build read and what it did to each feature table."""

    mode: str  # "full" or "incremental"
    silver_version: int
    new_silver_rows: int | None = None  # rows read by an incremental build
    fallback_reason: str = ""  # why an incremental request ran a full build
    tables: list[TableUpdate] = field(default_factory=list)

    def versions(self) -> dict[str, int]:
        """{table: version} of silver and every feature table after the build."""
        return {SILVER_TABLE: self.silver_version, **{update.table: update.version for update in self.tables}}

    def summary(self) -> dict[str, Any]:
        """The JSON form (`streamrec features build --json`, the Dagster step's summary): mode,
        silver_version, new_silver_rows and fallback_reason when there are any, rows_written
        and versions ({table: ...} of every feature table; versions with silver's)."""
        found: dict[str, Any] = {"mode": self.mode, "silver_version": self.silver_version}
        if self.new_silver_rows is not None:
            found["new_silver_rows"] = self.new_silver_rows
        if self.fallback_reason:
            found["fallback_reason"] = self.fallback_reason
        found["rows_written"] = {update.table: update.rows for update in self.tables}
        found["versions"] = self.versions()
        return found


def build(
    settings: Settings, incremental: bool = False, log: Log = print, ranking: RankingSpec | None = None
) -> BuildReport:
    """Bring the feature tables up to the latest silver/events version (and
    features/ranking_examples too when ``ranking`` is given)."""
    silver_uri = settings.table_uri(SILVER_TABLE)
    silver_version = table_version(silver_uri)
    if silver_version is None:
        raise FileNotFoundError(f"no silver/events table at {silver_uri}; run ingestion first")
    log(f"read {SILVER_TABLE} version {silver_version}")
    if incremental:
        reason = _full_build_reason(settings, silver_version, ranking)
        if not reason:
            return _incremental_build(settings, silver_version, log, ranking)
        log(f"incremental build not possible ({reason}): running a full build")
        report = _full_build(settings, silver_version, log, ranking)
        report.fallback_reason = reason
        return report
    return _full_build(settings, silver_version, log, ranking)


def _full_build_reason(settings: Settings, silver_version: int, spec: RankingSpec | None = None) -> str:
    """Why an incremental build must run as a full build, or '' when it can run."""
    if spec is not None:
        reason = _ranking_full_build_reason(settings, silver_version, spec)
        if reason:
            return reason
    for name in FEATURE_TABLES:
        state = recorded_state(settings.table_uri(name))
        if state is None:
            return f"{name} has no recorded build"
        since, max_len = state
        if name == USER_SEQUENCES_TABLE and max_len != settings.features.max_len:
            return f"{name} was built with max_len {max_len}, the setting is now {settings.features.max_len}"
        if since > silver_version:
            return f"{name} reflects silver version {since}, newer than the current {silver_version}"
    return ""


def _ranking_full_build_reason(settings: Settings, silver_version: int, spec: RankingSpec) -> str:
    name = RANKING_EXAMPLES_TABLE
    state = ranking_state(settings.table_uri(name))
    if state is None:
        return f"{name} has no recorded build"
    if (state.window_ms, state.max_len) != (spec.window_ms, spec.max_len):
        return (
            f"{name} was built with window_ms {state.window_ms} and max_len {state.max_len}, "
            f"now asked for {spec.window_ms} and {spec.max_len}"
        )
    if spec.boundaries is not None and spec.boundaries != (state.validation_from_ts, state.test_from_ts):
        return f"{name} was split at {(state.validation_from_ts, state.test_from_ts)}, now asked for {spec.boundaries}"
    if (state.validation_from_ts, state.test_from_ts) == (0, 0) and spec.boundaries is None:
        return f"{name} has no split boundaries yet (it was built from no rows)"
    if state.silver_version > silver_version:
        return f"{name} reflects silver version {state.silver_version}, newer than the current {silver_version}"
    return ""


# Full build (Spark) ---------------------------------------------------------------------


def _full_build(settings: Settings, silver_version: int, log: Log, spec: RankingSpec | None = None) -> BuildReport:
    from features import spark_jobs
    from infra.lake import read_delta
    from infra.spark import spark_session

    report = BuildReport(mode="full", silver_version=silver_version)
    record = build_record(silver_version, settings.features.max_len)
    started = time.monotonic()
    spark = spark_session(settings, "streamrec-features")
    log(f"spark session ready ({time.monotonic() - started:.1f}s)")
    events = read_delta(spark, settings.table_uri(SILVER_TABLE), silver_version).select(*EVENT_COLUMNS).cache()
    try:
        vocab_uri = settings.table_uri(ITEM_VOCAB_TABLE)
        snapshot = _vocab_snapshot(settings)  # the Spark job's filter and the append read one version
        vocab = _read_vocab(snapshot)
        unseen = spark_jobs.unseen_items(events, spark.createDataFrame(vocab.select(["item_id"]))).toArrow()
        report.tables.append(_append_new_items(settings, snapshot, unseen, record, log).update)
        vocab_df = read_delta(spark, vocab_uri, report.tables[-1].version)

        sequences_df = spark_jobs.user_sequences(events, vocab_df, settings.features.max_len)
        sequences = _arrow(sequences_df, USER_SEQUENCES_SCHEMA, "user_id")
        report.tables.append(_overwrite(settings, USER_SEQUENCES_TABLE, sequences, record, log))

        stats = _arrow(spark_jobs.item_stats(events, vocab_df), ITEM_STATS_SCHEMA, "item_index")
        report.tables.append(_overwrite(settings, ITEM_STATS_TABLE, stats, record, log))

        if spec is not None:
            from pyspark.sql import functions as F

            partitions = max(1, int(spark.conf.get("spark.sql.shuffle.partitions") or "1"))
            rows_df = spark_jobs.ranking_examples(events, vocab_df, spec.window_ms, spec.max_len, partitions)
            rows = rows_df.toArrow().select(RANKING_ROWS_SCHEMA.names).cast(RANKING_ROWS_SCHEMA)
            watermark = events.agg(F.max("ts")).collect()[0][0]
            report.tables.append(_write_ranking(settings, rows, silver_version, watermark, spec, log))
    finally:
        events.unpersist()
    return report


def _write_ranking(
    settings: Settings, rows: pa.Table, silver_version: int, watermark: int | None, spec: RankingSpec, log: Log
) -> TableUpdate:
    """Overwrite features/ranking_examples with ``rows``, split at the spec's, the recorded
    or (first build) the quantile boundaries."""
    recorded = ranking_state(settings.table_uri(RANKING_EXAMPLES_TABLE))
    boundaries = spec.boundaries
    if boundaries is None and recorded is not None and (recorded.validation_from_ts, recorded.test_from_ts) != (0, 0):
        boundaries = (recorded.validation_from_ts, recorded.test_from_ts)
    if boundaries is None:
        boundaries = ranking.quantile_boundaries(rows.column("ts").to_numpy())
        log(f"{RANKING_EXAMPLES_TABLE}: split boundaries from the rows' ts quantiles: {boundaries}")
    order = [(name, "ascending") for name in ("user_id", "ts", "kafka_partition", "kafka_offset")]
    table = ranking.with_split(rows.sort_by(order), boundaries)
    state = RankingState(silver_version, spec.max_len, spec.window_ms, *boundaries, watermark or 0)
    return _overwrite(settings, RANKING_EXAMPLES_TABLE, table, ranking_record(state), log)


def _arrow(frame: DataFrame, schema: pa.Schema, sort_key: str) -> pa.Table:
    """A Spark DataFrame collected as Arrow with the table's schema, sorted by ``sort_key``."""
    return frame.toArrow().select(schema.names).cast(schema).sort_by(sort_key)


# Incremental build (Arrow) ---------------------------------------------------------------


def _incremental_build(
    settings: Settings, silver_version: int, log: Log, spec: RankingSpec | None = None
) -> BuildReport:
    report = BuildReport(mode="incremental", silver_version=silver_version)
    record = build_record(silver_version, settings.features.max_len)
    silver_uri = settings.table_uri(SILVER_TABLE)
    changes: dict[int, SilverChanges] = {}

    def changes_since(name: str) -> SilverChanges | None:
        since = recorded_state(settings.table_uri(name))[0]  # type: ignore[index]
        if since == silver_version:
            return None
        if since not in changes:
            changes[since] = silver_changes(silver_uri, since, silver_version)
            log(f"silver versions {since}..{silver_version}: {len(changes[since].new_rows):,} new rows")
        return changes[since]

    updates: list[tuple[str, Callable[[Settings, SilverChanges, CommitProperties, Log], TableUpdate]]] = [
        (ITEM_VOCAB_TABLE, _update_vocab),
        (USER_SEQUENCES_TABLE, _update_sequences),
        (ITEM_STATS_TABLE, _update_stats),
    ]
    if spec is not None:
        updates.append((RANKING_EXAMPLES_TABLE, lambda s, d, r, lg: _update_ranking(s, d, spec, lg)))
    for name, update in updates:
        uri = settings.table_uri(name)
        try:
            delta = changes_since(name)
        except (OSError, DeltaError) as error:  # old files vacuumed or old log entries cleaned up
            delta, reason = None, f"cannot diff silver versions: {error}"
        else:
            reason = f"{delta.lost_rows} silver rows were removed" if delta and delta.lost_rows else ""
        if reason:
            log(f"incremental build not possible ({reason}): running a full build")
            full = _full_build(settings, silver_version, log, spec)
            full.fallback_reason = reason
            return full
        if delta is None:
            version = DeltaTable(uri).version()
            log(f"{name}: up to date at version {version}")
            report.tables.append(TableUpdate(name, version, 0, written=False))
            continue
        report.new_silver_rows = len(delta.new_rows)
        report.tables.append(update(settings, delta, record, log))
    return report


def _update_vocab(settings: Settings, delta: SilverChanges, record: CommitProperties, log: Log) -> TableUpdate:
    return append_new_items(settings, delta.new_rows, record, log).update


@dataclass(frozen=True)
class VocabAppend:
    """What ``append_new_items`` did: the rows it appended and the vocabulary after them."""

    added: pa.Table  # ITEM_VOCAB_SCHEMA: the new items and the indices they got
    vocab: pa.Table  # ITEM_VOCAB_SCHEMA: the whole vocabulary the append committed on top of, plus ``added``
    update: TableUpdate


def append_new_items(settings: Settings, events: pa.Table, record: CommitProperties, log: Log = print) -> VocabAppend:
    """The one rule that gives items their indices (builds and the follow job both call it):
    the items of ``events`` (``item_id``, ``ts``) missing from the vocabulary get the next
    indices (``arrow_jobs.new_items``) and are appended, committing against the version read,
    with ``record`` (``tables.build_record``: the silver version the vocabulary now covers).

    Raises ``ConcurrentBuildError`` when another writer committed the vocabulary since it was read
    (nothing written: call again). Commits even when no item is new, so the record lands."""
    return _append_new_items(settings, _vocab_snapshot(settings), events, record, log)


def _append_new_items(
    settings: Settings, snapshot: DeltaTable | None, events: pa.Table, record: CommitProperties, log: Log
) -> VocabAppend:
    """``append_new_items`` against the vocabulary at ``snapshot``'s version."""
    vocab = _read_vocab(snapshot)
    added = arrow_jobs.new_items(events, vocab)
    update = _append_vocab(settings, snapshot, added, record, log)
    return VocabAppend(added, pa.concat_tables([vocab, added]), update)


def _vocab_snapshot(settings: Settings) -> DeltaTable | None:
    """The vocabulary table at the version a build reads (None before the first build)."""
    uri = settings.table_uri(ITEM_VOCAB_TABLE)
    return DeltaTable(uri) if DeltaTable.is_deltatable(uri) else None


def _append_vocab(
    settings: Settings, snapshot: DeltaTable | None, rows: pa.Table, record: CommitProperties, log: Log
) -> TableUpdate:
    """Append the new items, indexed after the vocabulary of ``snapshot``, committing against
    that version: a build that committed since carries the same app transaction (the silver
    version record), so Delta refuses this commit instead of letting two builds give the next
    indices to different items (an index never changes meaning)."""
    try:
        write_deltalake(snapshot or settings.table_uri(ITEM_VOCAB_TABLE), rows, mode="append", commit_properties=record)
    except CommitFailedError as error:
        read = snapshot.version() if snapshot is not None else None
        raise ConcurrentBuildError(
            f"another feature build committed {ITEM_VOCAB_TABLE} after this one read version {read}; nothing of "
            f"this build was written there: run it again (it continues from what the other build wrote)"
        ) from error
    return _written(settings, ITEM_VOCAB_TABLE, len(rows), "appended", log)


def _update_sequences(settings: Settings, delta: SilverChanges, record: CommitProperties, log: Log) -> TableUpdate:
    uri = settings.table_uri(USER_SEQUENCES_TABLE)
    vocab = _read_vocab(_vocab_snapshot(settings))
    users = pc.unique(delta.new_rows.column("user_id"))
    stored = DeltaTable(uri).to_pyarrow_dataset().to_table(filter=rows_with("user_id", users))
    # Users whose new events all come after their stored ones get them appended; users
    # with a late event are rebuilt from every one of their silver rows.
    late = arrow_jobs.late_users(stored, delta.new_rows)
    appending = pc.invert(pc.is_in(stored.column("user_id"), value_set=late))
    new_rows = delta.new_rows.filter(pc.invert(pc.is_in(delta.new_rows.column("user_id"), value_set=late)))
    late_rows = rows_of_users(settings.table_uri(SILVER_TABLE), delta.until, late)
    events = pa.concat_tables(
        [
            _events(arrow_jobs.stored_events(stored.filter(appending))),
            _events(arrow_jobs.with_item_index(new_rows, vocab)),
            _events(arrow_jobs.with_item_index(late_rows, vocab)),
        ]
    )
    log(f"{USER_SEQUENCES_TABLE}: {len(users):,} users touched, {len(late):,} with late events rebuilt from silver")
    rebuilt = arrow_jobs.sequences_from_events(events, settings.features.max_len)
    return _merge(settings, USER_SEQUENCES_TABLE, rebuilt, "user_id", record, log)


def _update_stats(settings: Settings, delta: SilverChanges, record: CommitProperties, log: Log) -> TableUpdate:
    uri = settings.table_uri(ITEM_STATS_TABLE)
    increments = arrow_jobs.stats_of_events(delta.new_rows)
    stored = DeltaTable(uri).to_pyarrow_dataset().to_table(filter=rows_with("item_id", increments.column("item_id")))
    vocab = _read_vocab(_vocab_snapshot(settings))
    return _merge(settings, ITEM_STATS_TABLE, arrow_jobs.add_stats(stored, increments, vocab), "item_id", record, log)


def _update_ranking(settings: Settings, delta: SilverChanges, spec: RankingSpec, log: Log) -> TableUpdate:
    """Rebuild the rows new events can change, from every silver row of their users; MERGE."""
    uri = settings.table_uri(RANKING_EXAMPLES_TABLE)
    state = ranking_state(uri)
    if state is None:  # _full_build_reason rules this out
        raise ValueError(f"{RANKING_EXAMPLES_TABLE} has no recorded build")
    boundaries = (state.validation_from_ts, state.test_from_ts)
    users = pc.unique(delta.new_rows.column("user_id"))
    affected = ranking.affected_from(delta.new_rows, spec.window_ms)
    vocab = _read_vocab(_vocab_snapshot(settings))
    events = arrow_jobs.with_item_index(rows_of_users(settings.table_uri(SILVER_TABLE), delta.until, users), vocab)
    fresh = ranking.with_split(ranking.rows_from(ranking.ranking_rows(events, spec.window_ms, spec.max_len), affected),
                               boundaries)  # fmt: skip
    stored = DeltaTable(uri).to_pyarrow_dataset().to_table(filter=rows_with("user_id", users))
    stored = ranking.rows_from(stored.select(RANKING_EXAMPLES_SCHEMA.names).cast(RANKING_EXAMPLES_SCHEMA), affected)
    stale = stored.filter(pc.invert(pc.is_in(stored.column("event_id"), value_set=fresh.column("event_id"))))
    new_max = pc.max(delta.new_rows.column("ts")).as_py()
    watermark = max(state.watermark_ts, new_max if new_max is not None else 0)
    record = ranking_record(RankingState(delta.until, spec.max_len, spec.window_ms, *boundaries, watermark))
    log(
        f"{RANKING_EXAMPLES_TABLE}: {len(users):,} users with new events: {len(fresh):,} rows rebuilt "
        f"from (earliest new event - window) on, {len(stale):,} gone"
    )
    if len(fresh) + len(stale) == 0:  # nothing to merge; still record the silver version
        return _append(settings, RANKING_EXAMPLES_TABLE, RANKING_EXAMPLES_SCHEMA.empty_table(), record, log)
    source = pa.concat_tables(
        [
            fresh.append_column("_gone", pa.array(np.zeros(len(fresh), dtype=bool))),
            stale.append_column("_gone", pa.array(np.ones(len(stale), dtype=bool))),
        ]
    )
    columns = {name: f"s.{name}" for name in RANKING_EXAMPLES_SCHEMA.names}
    merger = DeltaTable(uri).merge(
        source, "t.event_id = s.event_id", source_alias="s", target_alias="t", commit_properties=record
    )
    merger.when_matched_delete(predicate="s._gone").when_matched_update(columns).when_not_matched_insert(
        columns, predicate="NOT s._gone"
    ).execute()
    return _written(settings, RANKING_EXAMPLES_TABLE, len(source), "merged", log)


def _events(table: pa.Table) -> pa.Table:
    return table.select(arrow_jobs.INDEXED_EVENTS.names).cast(arrow_jobs.INDEXED_EVENTS)


# Delta writes ---------------------------------------------------------------------------


def _read_vocab(snapshot: DeltaTable | None) -> pa.Table:
    """The vocabulary at ``snapshot``'s version (empty before the first build)."""
    return ITEM_VOCAB_SCHEMA.empty_table() if snapshot is None else snapshot.to_pyarrow_table().cast(ITEM_VOCAB_SCHEMA)


def _append(settings: Settings, name: str, rows: pa.Table, record: CommitProperties, log: Log) -> TableUpdate:
    write_deltalake(settings.table_uri(name), rows, mode="append", commit_properties=record)
    return _written(settings, name, len(rows), "appended", log)


def _overwrite(settings: Settings, name: str, rows: pa.Table, record: CommitProperties, log: Log) -> TableUpdate:
    write_deltalake(settings.table_uri(name), rows, mode="overwrite", commit_properties=record)
    return _written(settings, name, len(rows), "written", log)


def _merge(settings: Settings, name: str, rows: pa.Table, key: str, record: CommitProperties, log: Log) -> TableUpdate:
    if len(rows) == 0:  # nothing to merge; still record the silver version
        return _append(settings, name, rows, record, log)
    merger = DeltaTable(settings.table_uri(name)).merge(
        rows, f"t.{key} = s.{key}", source_alias="s", target_alias="t", commit_properties=record
    )
    merger.when_matched_update_all().when_not_matched_insert_all().execute()
    return _written(settings, name, len(rows), "merged", log)


def _written(settings: Settings, name: str, rows: int, verb: str, log: Log) -> TableUpdate:
    version = DeltaTable(settings.table_uri(name)).version()
    log(f"{name}: {rows:,} rows {verb} -> version {version}")
    return TableUpdate(name, version, rows, written=True)

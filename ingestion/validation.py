"""Validation of raw Kafka records in bulk: Arrow in, bronze rows and quarantined rows out.

A record is valid when its value is UTF-8 JSON holding one object with the contract fields
(``ingestion.schema``) of the right types and sensible values. Unknown extra fields are
allowed and dropped (producers may add fields before the contract does); the same contract
field twice is not. Every invalid record gets a ``reason`` a person can read.

The hot path never loops over records in Python: values are checked with Arrow compute
kernels, the whole batch is parsed at once by ``pyarrow.json`` and the semantic rules run
as vectorised expressions. Only records the fast parser cannot take (and, to tell a
missing field from a null one, records with a null required field) are parsed one by one
with the standard ``json`` module, which also finds the exact reason. Both parsers accept
and reject the same records (tests/ingestion/test_validation.py checks it).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from infra.settings import IngestSettings
from ingestion.schema import ACTIONS, BRONZE_SCHEMA, EVENT_FIELDS, QUARANTINE_SCHEMA, REQUIRED_FIELDS

EVENT_SCHEMA = pa.schema([field.with_nullable(True) for field in EVENT_FIELDS])
ID_FIELDS = ("event_id", "user_id", "item_id")
_INT64 = (-(2**63), 2**63 - 1)
_FAST_CHUNK = 2_048  # records per pyarrow.json call: failures are isolated cheaply
_SMALLEST_FAST_CHUNK = 16  # a failing chunk this small is parsed record by record
_ERROR_ROW = re.compile(r"in row (\d+)$")
_MAX_SHOWN = 60  # characters of an offending value quoted in a reason


@dataclass(frozen=True)
class ValidationLimits:
    """Limits a valid record stays within."""

    max_event_bytes: int = 65_536
    future_tolerance_ms: int = 3_600_000

    @classmethod
    def from_settings(cls, ingest: IngestSettings) -> ValidationLimits:
        """The limits of the ingest settings (``settings.ingest``)."""
        return cls(ingest.max_event_bytes, int(ingest.future_tolerance_s * 1000))


@dataclass(frozen=True)
class Validated:
    """Outcome of validating one batch of raw records (both tables keep Kafka order)."""

    valid: pa.Table  # BRONZE_SCHEMA
    invalid: pa.Table  # QUARANTINE_SCHEMA


def validate_records(
    records: pa.Table | pa.RecordBatch,
    limits: ValidationLimits,
    ingested_at: datetime | None = None,
    *,
    fast: bool = True,
) -> Validated:
    """Split raw Kafka records (columns key, value, partition, offset) into bronze and quarantine rows.

    ``ingested_at`` (default now) stamps both outputs. A ts is "in the future" when it lies
    beyond a record's Kafka timestamp (column ``timestamp``; ``ingested_at`` for records
    without one) by more than the tolerance, so validating the same records again gives
    the same answer. ``fast=False`` parses every record with the per-record parser (the
    reference the fast path is tested against).
    """
    if isinstance(records, pa.RecordBatch):
        records = pa.Table.from_batches([records])
    ingested_at = ingested_at or datetime.now(UTC)
    values = _cast(records.column("value"), pa.binary())
    texts = values.view(pa.string())  # no copy: only rows found to be UTF-8 are read as text
    reasons: dict[int, str] = {}

    lengths = pc.binary_length(values)
    missing = values.is_null().to_numpy(zero_copy_only=False)
    for row in np.flatnonzero(missing):
        reasons[int(row)] = "the record has no value (a null Kafka value)"
    too_long = pc.fill_null(pc.greater(lengths, limits.max_event_bytes), False).to_numpy(zero_copy_only=False)
    for row in np.flatnonzero(too_long):
        reasons[int(row)] = (
            f"the value is {lengths[row].as_py()} bytes, over the limit of {limits.max_event_bytes} bytes"
            " (ingest_max_event_bytes)"
        )
    candidates = ~(missing | too_long)
    for bad_row, reason in _invalid_utf8(texts, candidates).items():
        reasons[bad_row] = reason
        candidates[bad_row] = False

    events, event_rows = _parse(texts, candidates, reasons, fast)
    good = np.ones(len(event_rows), dtype=bool)
    clock = _reference_ms(records, ingested_at).take(pa.array(event_rows, pa.int64()))
    for position, reason in _rule_reasons(events, clock, limits.future_tolerance_ms).items():
        reasons[int(event_rows[position])] = reason
        good[position] = False
    if not good.all():
        events, event_rows = events.filter(pa.array(good)), event_rows[good]
    if len(event_rows) > 1 and not (np.diff(event_rows) > 0).all():  # back to Kafka order
        order = np.argsort(event_rows, kind="stable")
        events, event_rows = events.take(order), event_rows[order]
    return Validated(
        valid=_bronze(events, records, event_rows, ingested_at),
        invalid=_quarantine(records, reasons, ingested_at),
    )


# --- decoding -------------------------------------------------------------------------


def _invalid_utf8(texts: pa.Array, candidates: np.ndarray) -> dict[int, str]:
    """{row: reason} for the candidate rows whose bytes are not valid UTF-8.

    Arrow validates whole chunks; only a chunk that fails is decoded record by record.
    """
    invalid: dict[int, str] = {}
    for start in range(0, len(texts), _FAST_CHUNK):
        try:
            texts.slice(start, _FAST_CHUNK).validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        for row in np.flatnonzero(candidates[start : start + _FAST_CHUNK]) + start:
            raw = texts.view(pa.binary())[int(row)].as_py()
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                byte = raw[error.start : error.start + 1]
                invalid[int(row)] = f"the value is not valid UTF-8 ({error.reason} at byte {error.start}: {byte!r})"
    return invalid


# --- parsing --------------------------------------------------------------------------


def _parse(texts: pa.Array, candidates: np.ndarray, reasons: dict[int, str], fast: bool) -> tuple[pa.Table, np.ndarray]:
    """Typed event columns (EVENT_SCHEMA) of the candidate rows that parse, and those rows."""
    tables: list[pa.Table] = []
    table_rows: list[np.ndarray] = []
    if fast:
        eligible = _fast_parse_eligible(texts) & candidates
        slow = np.flatnonzero(candidates & ~eligible).tolist()
        for rows, table in _fast_parse(texts, np.flatnonzero(eligible), slow):
            # A null required field may be missing or null: the slow parser tells which.
            incomplete = np.zeros(table.num_rows, dtype=bool)
            for name in REQUIRED_FIELDS:
                incomplete |= table.column(name).is_null().to_numpy(zero_copy_only=False)
            if incomplete.any():
                slow.extend(rows[incomplete].tolist())
                table, rows = table.filter(pa.array(~incomplete)), rows[~incomplete]
            tables.append(table)
            table_rows.append(rows)
    else:
        slow = np.flatnonzero(candidates).tolist()

    slow_events: list[tuple] = []
    slow_rows: list[int] = []
    for row in sorted(slow):
        parsed = parse_event(texts[row].as_py())
        if isinstance(parsed, str):
            reasons[row] = parsed
        else:
            slow_events.append(parsed)
            slow_rows.append(row)
    if slow_events or not tables:
        columns: list[Sequence[Any]] = (
            list(zip(*slow_events, strict=True)) if slow_events else [[] for _ in EVENT_SCHEMA.names]
        )
        arrays = [pa.array(c, f.type) for c, f in zip(columns, EVENT_SCHEMA, strict=True)]
        tables.append(pa.table(arrays, schema=EVENT_SCHEMA))
        table_rows.append(np.array(slow_rows, dtype=np.int64))
    return pa.concat_tables(tables), np.concatenate(table_rows)


def _fast_parse_eligible(texts: pa.Array) -> np.ndarray:
    """Records that look like one single-line JSON object: they start with '{', end with '}'
    and hold no line break (the fast parser reads one object per line)."""
    offsets, data = _offsets_and_data(texts)
    starts, ends = offsets[:-1], offsets[1:]
    eligible = ends > starts
    first = data[np.minimum(starts, len(data) - 1)] if len(data) else np.zeros(len(starts), np.uint8)
    last = data[np.maximum(ends - 1, 0)] if len(data) else np.zeros(len(starts), np.uint8)
    eligible &= (first == ord("{")) & (last == ord("}"))
    breaks = np.flatnonzero((data == ord("\n")) | (data == ord("\r")))
    if len(breaks):
        eligible[np.unique(np.searchsorted(starts, breaks, side="right") - 1)] = False
    return eligible


def _offsets_and_data(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Value offsets (rebased to 0) and the bytes of a string array without nulls."""
    _, offset_buffer, data_buffer = texts.buffers()
    offsets = np.frombuffer(offset_buffer, dtype=np.int32)[texts.offset : texts.offset + len(texts) + 1]
    if data_buffer is None or not len(offsets) or offsets[-1] == offsets[0]:
        return offsets - (offsets[0] if len(offsets) else 0), np.zeros(0, np.uint8)
    data = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]]
    return offsets - offsets[0], data


def _fast_parse(texts: pa.Array, positions: np.ndarray, slow: list[int]) -> list[tuple[np.ndarray, pa.Table]]:
    """Parse ``texts[positions]`` with pyarrow.json in chunks, on a few threads (the parser
    releases the GIL); positions of records that fail go to ``slow``."""
    chunks = [positions[i : i + _FAST_CHUNK] for i in range(0, len(positions), _FAST_CHUNK)]
    parsed: list[tuple[np.ndarray, pa.Table]] = []
    for chunk_parsed, chunk_slow in _parse_threads().map(lambda chunk: _parse_chunk(texts, chunk), chunks):
        parsed += chunk_parsed
        slow += chunk_slow
    return parsed


@functools.cache
def _parse_threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="validate")


def _parse_chunk(texts: pa.Array, chunk: np.ndarray) -> tuple[list[tuple[np.ndarray, pa.Table]], list[int]]:
    """Parse ``texts[chunk]``; a failing part is split around the row the parser names in its
    error (or into eighths when it names none) until the failing records are alone."""
    parsed: list[tuple[np.ndarray, pa.Table]] = []
    slow: list[int] = []
    pending = [chunk]
    while pending:
        part = pending.pop()
        table, bad_row = _read_json_lines(texts.take(part))
        if table is not None:
            parsed.append((part, table))
        elif bad_row is not None and bad_row < len(part):
            slow.append(int(part[bad_row]))
            pending.extend(piece for piece in (part[:bad_row], part[bad_row + 1 :]) if len(piece))
        elif len(part) <= _SMALLEST_FAST_CHUNK:
            slow.extend(part.tolist())
        else:
            pending.extend(np.array_split(part, 8))
    return parsed, slow


def _read_json_lines(texts: pa.Array) -> tuple[pa.Table | None, int | None]:
    """(one row per text typed to EVENT_SCHEMA, None), or (None, the failing row if known)."""
    joined = pc.binary_join_element_wise(texts, pa.scalar("\n"), pa.scalar(""))
    offsets, data = _offsets_and_data(joined)
    options = pj.ParseOptions(explicit_schema=EVENT_SCHEMA, unexpected_field_behavior="ignore")
    # One block, one thread: the parser stops at the first bad line and names its row.
    read_options = pj.ReadOptions(use_threads=False, block_size=len(data) + 1)
    try:
        table = pj.read_json(pa.BufferReader(pa.py_buffer(data)), read_options=read_options, parse_options=options)
    except (pa.ArrowInvalid, UnicodeDecodeError) as error:
        row = _ERROR_ROW.search(str(error))
        return None, int(row.group(1)) if row else None
    if table.num_rows != len(texts):  # e.g. two objects on one line
        return None, None
    return table.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA), None


class _Object(dict):
    """A JSON object that remembers which of its keys appeared more than once."""

    def __init__(self, pairs: list[tuple[str, object]]) -> None:
        super().__init__(pairs)
        seen: set[str] = set()
        self.repeated: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                self.repeated.add(key)
            seen.add(key)


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"number {text[:_MAX_SHOWN]} is too big for a double")
    return number


def parse_event(text: str) -> tuple | str:
    """One record's event fields as a tuple in EVENT_SCHEMA order, or the reason it is invalid.

    Explicitly null fields come back as None (the vectorised rules judge them).
    """
    try:
        obj = json.loads(text, object_pairs_hook=_Object, parse_float=_finite_float)
    except ValueError as error:  # JSONDecodeError is a ValueError
        return f"the value is not JSON ({error})"
    if not isinstance(obj, dict):
        return f"the value is JSON but not an object (it is {_kind(obj)})"
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "the value is not JSON (a string holds an unpaired surrogate \\u escape)"
    repeated = sorted(obj.repeated & set(EVENT_SCHEMA.names)) if isinstance(obj, _Object) else []
    if repeated:
        return f"field '{repeated[0]}' appears more than once"
    for name in REQUIRED_FIELDS:
        if name not in obj:
            return f"required field '{name}' is missing"
    out = []
    for field in EVENT_SCHEMA:
        value = obj.get(field.name)
        if value is not None:
            if pa.types.is_string(field.type) and not isinstance(value, str):
                return f"field '{field.name}' must be a string, not {_kind(value)} ({_show(value)})"
            if pa.types.is_integer(field.type):
                if isinstance(value, bool) or not isinstance(value, int):
                    return f"field '{field.name}' must be an integer, not {_kind(value)} ({_show(value)})"
                if not _INT64[0] <= value <= _INT64[1]:
                    return f"field '{field.name}' ({_show(value)}) does not fit in a 64-bit integer"
        out.append(value)
    return tuple(out)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _show(value: object) -> str:
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= _MAX_SHOWN else shown[:_MAX_SHOWN] + "..."


# --- rules on typed events ------------------------------------------------------------


def _reference_ms(records: pa.Table, ingested_at: datetime) -> pa.Array:
    """Per record the clock (epoch ms) its ts is judged by: its Kafka timestamp, else ingested_at."""
    fallback = pa.scalar(int(ingested_at.timestamp() * 1000), pa.int64())
    if "timestamp" not in records.column_names:
        return pa.repeat(fallback, records.num_rows)
    kafka_ms = pc.cast(pc.cast(records["timestamp"], pa.timestamp("ms", tz="UTC")), pa.int64())
    known = pc.and_(pc.is_valid(kafka_ms), pc.greater(pc.fill_null(kafka_ms, 0), 0))
    return _arrays([pc.if_else(known, kafka_ms, fallback)])[0]


def _rule_reasons(events: pa.Table, clock_ms: pa.Array, future_tolerance_ms: int) -> dict[int, str]:
    """{position: reason of the first rule the event breaks} for the events that break one.

    ``clock_ms`` holds per event the time (epoch ms) far-future timestamps are judged by.
    """
    tolerance = f"{future_tolerance_ms / 1000:g} s after its Kafka timestamp "
    events = events.append_column("clock_ms", clock_ms)
    rules: list[tuple[Callable[[pa.Table], pa.Array], str | Callable[[pa.Table], pa.Array]]] = []
    for name in REQUIRED_FIELDS:
        rules.append((partial(_is_null, name), f"required field '{name}' is null"))
    for name in ID_FIELDS:
        rules.append((partial(_is_blank, name), f"field '{name}' is empty"))
    rules += [
        (lambda t: pc.invert(pc.is_in(t["action"], pa.array(ACTIONS))),
         lambda t: _join("action '", pc.utf8_slice_codeunits(t["action"], 0, _MAX_SHOWN),
                         f"' is not one of {', '.join(ACTIONS)}")),
        (lambda t: pc.less(t["ts"], 0),
         lambda t: _join("ts ", pc.cast(t["ts"], pa.string()), " is negative (epoch milliseconds must be >= 0)")),
        (lambda t: pc.greater(t["ts"], pc.add(t["clock_ms"], future_tolerance_ms)),
         lambda t: _join("ts ", pc.cast(t["ts"], pa.string()), f" is more than {tolerance}",
                         _iso_ms(t["clock_ms"]), " (ingest_future_tolerance_s)")),
        (lambda t: pc.less(t["dwell_ms"], 0),
         lambda t: _join("dwell_ms ", pc.cast(t["dwell_ms"], pa.string()), " is negative")),
    ]  # fmt: skip

    broken = np.zeros(events.num_rows, dtype=bool)
    for condition, _ in rules:
        broken |= _mask(condition(events))
    positions = np.flatnonzero(broken)
    if not len(positions):
        return {}
    offenders = events.take(pa.array(positions))
    conditions = [pa.array(_mask(condition(offenders))) for condition, _ in rules]
    messages = [m if isinstance(m, str) else m(offenders) for _, m in rules]
    messages = [pa.scalar(m) if isinstance(m, str) else _arrays([m])[0] for m in messages]
    names = [f"rule{index}" for index in range(len(rules))]
    reasons = pc.case_when(pa.StructArray.from_arrays(conditions, names), *messages).to_pylist()
    return dict(zip(positions.tolist(), reasons, strict=True))


def _is_null(name: str, events: pa.Table) -> pa.Array:
    return events[name].is_null()


def _is_blank(name: str, events: pa.Table) -> pa.Array:
    return pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(events[name])), 0)


def _iso_ms(epoch_ms: pa.Array | pa.ChunkedArray) -> pa.Array:
    as_time = pc.cast(pc.cast(epoch_ms, pa.timestamp("ms", tz="UTC")), pa.timestamp("ms"))
    return pc.strftime(as_time, format="%Y-%m-%dT%H:%M:%SZ")


def _mask(condition: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(condition, False).to_numpy(zero_copy_only=False)


def _join(*parts: str | pa.Array | pa.ChunkedArray) -> pa.Array:
    pieces = [pa.scalar(p) if isinstance(p, str) else p for p in parts]
    return pc.binary_join_element_wise(*pieces, pa.scalar(""))


def _arrays(columns: Sequence[pa.Array | pa.ChunkedArray]) -> list[pa.Array]:
    return [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns]


# --- outputs --------------------------------------------------------------------------


def _bronze(events: pa.Table, records: pa.Table, rows: np.ndarray, ingested_at: datetime) -> pa.Table:
    every_row = len(rows) == records.num_rows  # rows are ascending: then they are all rows
    take = pa.array(rows, pa.int64())
    ts = events["ts"]
    event_date = pc.cast(pc.cast(ts, pa.timestamp("ms", tz="UTC")), pa.date32())
    columns = {name: events[name] for name in EVENT_SCHEMA.names}
    columns["kafka_partition"] = records["partition"] if every_row else records["partition"].take(take)
    columns["kafka_offset"] = records["offset"] if every_row else records["offset"].take(take)
    columns["ingested_at"] = _constant(ingested_at, len(rows), BRONZE_SCHEMA.field("ingested_at").type)
    columns["event_date"] = event_date
    return pa.table([_cast(columns[f.name], f.type) for f in BRONZE_SCHEMA], schema=BRONZE_SCHEMA)


def _quarantine(records: pa.Table, reasons: dict[int, str], ingested_at: datetime) -> pa.Table:
    rows = pa.array(sorted(reasons), pa.int64())
    columns = [
        _cast(records["value"].take(rows), pa.binary()),
        _cast(records["key"].take(rows), pa.binary()),
        _cast(records["partition"].take(rows), pa.int32()),
        _cast(records["offset"].take(rows), pa.int64()),
        pa.array([reasons[row] for row in rows.to_pylist()], pa.string()),
        _constant(ingested_at, len(rows), QUARANTINE_SCHEMA.field("ingested_at").type),
    ]
    return pa.table(columns, schema=QUARANTINE_SCHEMA)


def _constant(value: datetime, length: int, type_: pa.DataType) -> pa.Array:
    return pa.repeat(pa.scalar(value, type_), length)


def _cast(column: pa.Array | pa.ChunkedArray, type_: pa.DataType) -> pa.Array:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return column if column.type == type_ else column.cast(type_)

"""The Delta table of model deltas: what the follow job publishes and serving replicas apply.

One row per delta, partitioned by (model, base_version): the item-table rows changed since the
previous delta of the same base (dense indices and float32 vectors of one width), the dense
weights when they changed, the new vocabulary entries, and the silver/events version and Kafka
positions it reflects. Each delta is one Delta commit that also records a Delta app transaction
``streamrec.model_deltas.<model>.v<base>`` whose version is the delta's sequence number, so

- a reader sees a whole delta or none (the row and the app transaction land in one commit);
- the last sequence of a base is read from the log, without opening a data file, so a reader
  polling a quiet table opens nothing;
- two writers racing on the same base conflict: both commits carry the same app id, delta-rs
  refuses the later one (``CommitFailedError``), and ``publish`` turns that into
  ``SequenceConflict``. At most one delta per (base, sequence) becomes visible. (Plain appends
  without it would both commit: Delta treats blind appends as never conflicting.)

Deltas chain: each records the checksum of the delta before it (``""`` for sequence 1) inside its
own checksum, so a reader that applied deltas 1..k of a base notices when those were dropped and
others published in their place. Dropping a base's deltas (rollback, or a new registered version
replacing the base) deletes its rows and resets its app transaction to 0 in one commit; its
sequence numbers then start again at 1.

Serving imports this module, so it imports numpy, pyarrow and deltalake only (no torch, no pyspark).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import ColumnProperties, CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError
from deltalake.exceptions import DeltaError as DeltaLakeError

MODEL_DELTAS_TABLE = "models/deltas"
"""Lake name of the table: ``settings.table_uri(MODEL_DELTAS_TABLE)``."""

PARTITION_COLUMNS = ["model", "base_version"]

_INDICES_TYPE = pa.list_(pa.field("element", pa.int64(), nullable=False))
_IDS_TYPE = pa.list_(pa.field("element", pa.string(), nullable=False))
_PARTITIONS_TYPE = pa.list_(pa.field("element", pa.int32(), nullable=False))

MODEL_DELTAS_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("base_version", pa.int64(), nullable=False),
        pa.field("sequence", pa.int64(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("item_indices", _INDICES_TYPE, nullable=False),
        pa.field("item_vectors", pa.binary(), nullable=False),
        pa.field("dense_weights", pa.binary(), nullable=True),
        pa.field("new_item_ids", _IDS_TYPE, nullable=False),
        pa.field("new_item_indices", _INDICES_TYPE, nullable=False),
        pa.field("silver_version", pa.int64(), nullable=False),
        pa.field("kafka_partitions", _PARTITIONS_TYPE, nullable=False),
        pa.field("kafka_offsets", _INDICES_TYPE, nullable=False),
        pa.field("published_ms", pa.int64(), nullable=False),
        pa.field("previous_checksum", pa.string(), nullable=False),
        pa.field("checksum", pa.string(), nullable=False),
    ]
)
"""models/deltas, one row per delta. ``item_vectors`` holds the rows' float32 vectors as one
little-endian row-major blob (rows x width), in the order of ``item_indices``; the two
``new_item_*`` and the two ``kafka_*`` lists are parallel."""

# Vectors do not compress (snappy wins nothing on trained float32) and min/max statistics or a
# dictionary over one 25 MB value are wasted work: write the blobs plain.
_BLOB = ColumnProperties(dictionary_enabled=False, statistics_enabled="NONE")
_WRITER = WriterProperties(
    compression="UNCOMPRESSED", column_properties={"item_vectors": _BLOB, "dense_weights": _BLOB}
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # safe in a partition path and a SQL literal
_CHECKSUM = re.compile(r"[0-9a-f]{64}")
_MAX_BLOB = 2**31 - 1  # a binary value's int32 offsets


# Errors -------------------------------------------------------------------------------------
class ModelDeltaError(Exception):
    """Every error of this module."""


class InvalidDelta(ModelDeltaError):
    """A delta that breaks one of the table's rules; names it (``model``, ``base_version``,
    ``sequence``) so a replica can log it, report /healthz degraded and keep its last good state."""

    def __init__(self, model: str, base_version: int, sequence: int, problem: str) -> None:
        self.model = model
        self.base_version = base_version
        self.sequence = sequence
        self.problem = problem
        super().__init__(f"model delta {model} v{base_version} #{sequence}: {problem}")


class MalformedDelta(InvalidDelta):
    """Shapes, types or values outside the contract (a non-finite vector, an index out of range ...)."""


class DuplicateItems(InvalidDelta):
    """The same item index (or new item id) twice within one delta."""


class WidthMismatch(InvalidDelta):
    """Vectors of another width than the reader expects or the base's earlier deltas have."""

    def __init__(self, model: str, base_version: int, sequence: int, expected: int, found: int) -> None:
        self.expected = expected
        self.found = found
        super().__init__(model, base_version, sequence, f"vectors of width {found}, expected {expected}")


class ChecksumMismatch(InvalidDelta):
    """The stored payload does not hash to the stored checksum: corrupt or tampered."""


class UnreadableDelta(InvalidDelta):
    """The delta's file could not be read (truncated, deleted, or the store failed)."""


class SequenceGap(InvalidDelta):
    """The base's next stored delta is not the one expected (``sequence`` is the one expected)."""


class BrokenChain(InvalidDelta):
    """A delta that does not follow the one before it. Right after the caller's position: the
    deltas the caller applied were dropped and others published in their place: reload the base."""


class StalePosition(ModelDeltaError):
    """The caller has applied more deltas of a base than the table holds: they were dropped
    (rollback, or a new registered version replaced the base). Reload the base."""

    def __init__(self, position: DeltaPosition, last: int) -> None:
        self.position = position
        self.last = last
        super().__init__(f"{position}: the table's last delta of this base is #{last}; the base's deltas were dropped")


class SequenceConflict(ModelDeltaError):
    """``publish`` refused a delta that is not the next of its base; ``expected`` is the sequence
    the table expects now (a writer that lost a race, or restarted with a stale position)."""

    def __init__(self, delta: ModelDelta, expected: int, problem: str) -> None:
        self.delta = delta
        self.expected = expected
        super().__init__(f"model delta {delta.position}: {problem}; the table expects #{expected}")


# Records ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeltaPosition:
    """How far a model is along its deltas: base ``base_version`` plus deltas 1..``sequence``,
    the last of which has ``checksum`` (``""`` at the base itself). Serving's lineage."""

    model: str
    base_version: int
    sequence: int = 0
    checksum: str = ""

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.model):
            raise ValueError(f"model name {self.model!r}: letters, digits, '.', '_', '-' only")
        if self.base_version < 1 or self.sequence < 0:
            raise ValueError(f"{self}: base versions start at 1, sequences at 0 (the base itself)")
        if (self.sequence == 0) != (self.checksum == "") or (self.checksum and not _CHECKSUM.fullmatch(self.checksum)):
            raise ValueError(f"{self}: a position after delta k > 0 needs that delta's checksum (64 hex digits)")

    def __str__(self) -> str:
        return f"{self.model} v{self.base_version} #{self.sequence}"


@dataclass(frozen=True, eq=False)
class ModelDelta:
    """One published delta. Build one with ``ModelDelta.build``; the constructor checks the
    structure (raising ``InvalidDelta`` subclasses) but not the checksum (``verify_checksum``)."""

    model: str
    base_version: int  # the MLflow registered version the deltas apply to
    sequence: int  # 1, 2, ... per (model, base_version)
    item_indices: np.ndarray  # (rows,) int64 dense item indices, unique, >= 1 (0 is padding)
    item_vectors: np.ndarray  # (rows, width) float32, finite
    dense_weights: bytes | None  # the non-table weights, serialised by the writer, when they changed
    new_items: Mapping[str, int]  # raw item_id -> dense index (headroom rows) first seen in this delta
    silver_version: int  # the silver/events Delta version the model has learned up to
    kafka_offsets: Mapping[int, int]  # partition -> next offset not reflected (Kafka's committed offset)
    published_ms: int
    previous_checksum: str  # checksum of delta sequence - 1 ("" for sequence 1)
    checksum: str = field(repr=False)

    @classmethod
    def build(
        cls,
        after: DeltaPosition,
        *,
        item_indices: np.ndarray,
        item_vectors: np.ndarray,
        silver_version: int,
        kafka_offsets: Mapping[int, int],
        dense_weights: bytes | None = None,
        new_items: Mapping[str, int] | None = None,
        published_ms: int | None = None,
    ) -> ModelDelta:
        """The delta that follows ``after`` (sequence + 1, chained to its checksum), stamped now
        unless ``published_ms`` is given, with its checksum. Vectors are converted to float32."""
        indices = np.ascontiguousarray(item_indices, dtype=np.int64)
        vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        new = dict(new_items or {})
        offsets = dict(kafka_offsets)
        stamp = time.time_ns() // 1_000_000 if published_ms is None else published_ms
        sequence = after.sequence + 1
        width = vectors.shape[1] if vectors.ndim == 2 else 0
        checksum = _checksum(
            after.model, after.base_version, sequence, width, indices, vectors, dense_weights,
            new, silver_version, offsets, stamp, after.checksum,
        )  # fmt: skip
        return cls(
            after.model, after.base_version, sequence, indices, vectors, dense_weights, new,
            silver_version, offsets, stamp, after.checksum, checksum,
        )  # fmt: skip

    def __post_init__(self) -> None:
        for name in ("item_indices", "item_vectors"):
            array = getattr(self, name)
            if isinstance(array, np.ndarray):  # a read-only view: the caller's array stays writable
                view = array.view()
                view.flags.writeable = False
                object.__setattr__(self, name, view)
        for problem in _problems(self):
            raise MalformedDelta(self.model, self.base_version, self.sequence, problem)
        if np.unique(self.item_indices).size != self.item_indices.size:
            values, counts = np.unique(self.item_indices, return_counts=True)
            raise DuplicateItems(
                self.model, self.base_version, self.sequence, f"item indices twice: {values[counts > 1][:5].tolist()}"
            )
        if len(set(self.new_items.values())) != len(self.new_items):
            raise DuplicateItems(self.model, self.base_version, self.sequence, "two new items with one index")

    @property
    def width(self) -> int:
        return int(self.item_vectors.shape[1])

    @property
    def position(self) -> DeltaPosition:
        """Where a model stands once it has applied this delta."""
        return DeltaPosition(self.model, self.base_version, self.sequence, self.checksum)

    def computed_checksum(self) -> str:
        """The checksum of this delta's content (every field but ``checksum``)."""
        return _checksum(
            self.model, self.base_version, self.sequence, self.width, self.item_indices, self.item_vectors,
            self.dense_weights, self.new_items, self.silver_version, self.kafka_offsets, self.published_ms,
            self.previous_checksum,
        )  # fmt: skip

    def verify_checksum(self) -> None:
        """Raise ``ChecksumMismatch`` unless ``checksum`` is the content's."""
        if self.computed_checksum() != self.checksum:
            raise ChecksumMismatch(self.model, self.base_version, self.sequence, "payload does not match its checksum")


def _problems(delta: ModelDelta) -> Iterator[str]:
    """What breaks the contract in ``delta``'s structure, first problem first."""
    if not _NAME.fullmatch(delta.model):
        yield f"model name {delta.model!r}: letters, digits, '.', '_', '-' only"
    if delta.base_version < 1 or delta.sequence < 1:
        yield "base versions and sequences start at 1"
    indices, vectors = delta.item_indices, delta.item_vectors
    if not isinstance(indices, np.ndarray) or indices.dtype != np.int64 or indices.ndim != 1:
        yield "item_indices must be a 1-d int64 array"
    elif not isinstance(vectors, np.ndarray) or vectors.dtype != np.float32 or vectors.ndim != 2:
        yield "item_vectors must be a 2-d float32 array"
    elif vectors.shape[0] != indices.size or vectors.shape[1] < 1:
        yield f"{indices.size} item indices but vectors of shape {vectors.shape}"
    elif vectors.nbytes > _MAX_BLOB:
        yield f"{vectors.nbytes} bytes of vectors: over 2 GiB, publish smaller deltas"
    elif indices.size and int(indices.min()) < 1:
        yield "item indices start at 1 (0 is the padding row)"
    elif not np.isfinite(vectors).all():
        yield "non-finite values in item_vectors"
    elif not np.isin(np.fromiter(delta.new_items.values(), np.int64, len(delta.new_items)), indices).all():
        yield "a new item's index has no row in the delta"
    if any(not isinstance(item, str) or not item for item in delta.new_items):
        yield "new item ids must be non-empty strings"
    if delta.dense_weights is not None and (not isinstance(delta.dense_weights, bytes) or not delta.dense_weights):
        yield "dense_weights must be non-empty bytes or None"
    if delta.silver_version < 0 or delta.published_ms < 0:
        yield "silver_version and published_ms are >= 0"
    if any(partition < 0 or offset < 0 for partition, offset in delta.kafka_offsets.items()):
        yield "Kafka partitions and offsets are >= 0"
    if (delta.sequence == 1) != (delta.previous_checksum == "") or (
        delta.previous_checksum and not _CHECKSUM.fullmatch(delta.previous_checksum)
    ):
        yield "previous_checksum: '' for sequence 1, else the previous delta's 64 hex digits"


def _checksum(
    model: str,
    base_version: int,
    sequence: int,
    width: int,
    indices: np.ndarray,
    vectors: np.ndarray,
    dense_weights: bytes | None,
    new_items: Mapping[str, int],
    silver_version: int,
    kafka_offsets: Mapping[int, int],
    published_ms: int,
    previous_checksum: str,
) -> str:
    """SHA-256 over a canonical JSON header (lengths included, so the parts cannot shift) and the
    raw little-endian bytes of indices, vectors and dense weights. ``vectors`` may be raw bytes
    (uint8): a reader checks the stored blob before interpreting it."""
    header = json.dumps(
        {
            "model": model,
            "base_version": base_version,
            "sequence": sequence,
            "width": width,
            "rows": int(indices.size),
            "vector_bytes": int(vectors.nbytes),
            "dense_bytes": None if dense_weights is None else len(dense_weights),
            "new_items": sorted((str(item), int(index)) for item, index in new_items.items()),
            "silver_version": silver_version,
            "kafka_offsets": sorted((int(partition), int(offset)) for partition, offset in kafka_offsets.items()),
            "published_ms": published_ms,
            "previous_checksum": previous_checksum,
        },
        sort_keys=True,
    ).encode()
    digest = hashlib.sha256(len(header).to_bytes(8, "little") + header)
    digest.update(np.ascontiguousarray(indices, dtype="<i8").data)
    digest.update(np.ascontiguousarray(vectors).data)  # float32 little-endian, or the stored bytes
    if dense_weights is not None:
        digest.update(dense_weights)
    return digest.hexdigest()


# Arrow rows ---------------------------------------------------------------------------------
def _to_arrow(delta: ModelDelta) -> pa.Table:
    """``delta`` as the table's one row; the vectors' buffer is shared, not copied."""
    vectors = np.ascontiguousarray(delta.item_vectors, dtype="<f4")
    blob = pa.Array.from_buffers(
        pa.binary(), 1, [None, pa.py_buffer(np.array([0, vectors.nbytes], dtype=np.int32)), pa.py_buffer(vectors)]
    )
    new_ids = list(delta.new_items)
    partitions = sorted(delta.kafka_offsets)
    columns = {
        "model": pa.array([delta.model], pa.string()),
        "base_version": pa.array([delta.base_version], pa.int64()),
        "sequence": pa.array([delta.sequence], pa.int64()),
        "width": pa.array([delta.width], pa.int32()),
        "item_indices": _one_list(pa.array(delta.item_indices, pa.int64()), _INDICES_TYPE),
        "item_vectors": blob,
        "dense_weights": pa.array([delta.dense_weights], pa.binary()),
        "new_item_ids": _one_list(pa.array(new_ids, pa.string()), _IDS_TYPE),
        "new_item_indices": _one_list(pa.array([delta.new_items[i] for i in new_ids], pa.int64()), _INDICES_TYPE),
        "silver_version": pa.array([delta.silver_version], pa.int64()),
        "kafka_partitions": _one_list(pa.array(partitions, pa.int32()), _PARTITIONS_TYPE),
        "kafka_offsets": _one_list(pa.array([delta.kafka_offsets[p] for p in partitions], pa.int64()), _INDICES_TYPE),
        "published_ms": pa.array([delta.published_ms], pa.int64()),
        "previous_checksum": pa.array([delta.previous_checksum], pa.string()),
        "checksum": pa.array([delta.checksum], pa.string()),
    }
    return pa.Table.from_pydict(columns, schema=MODEL_DELTAS_SCHEMA)


def _one_list(values: pa.Array, list_type: pa.DataType) -> pa.Array:
    """A one-row list array holding ``values``."""
    return pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), values, type=list_type)


def _cell(rows: pa.Table, name: str) -> pa.Array:
    """The one-row array of column ``name`` (the chunk that holds the row, without copying)."""
    return next(chunk for chunk in rows.column(name).chunks if len(chunk))


def _list_values(rows: pa.Table, name: str) -> np.ndarray:
    return np.asarray(_cell(rows, name).flatten().to_numpy(zero_copy_only=False))


def _blob(rows: pa.Table, name: str) -> np.ndarray:
    """The one binary value of column ``name`` as uint8, sharing Arrow's buffer."""
    array = _cell(rows, name)
    start, end = np.frombuffer(array.buffers()[1], dtype=np.int32, count=2, offset=4 * array.offset)
    return np.frombuffer(array.buffers()[2], dtype=np.uint8, count=int(end - start), offset=int(start))


def _from_arrow(rows: pa.Table, model: str, base_version: int, sequence: int) -> ModelDelta:
    """The delta in the one row ``rows``: its checksum is checked on the stored bytes first, so a
    corrupt payload is reported as such rather than as whatever shape it broke into."""
    width = int(_cell(rows, "width")[0].as_py())
    indices = _list_values(rows, "item_indices").astype(np.int64, copy=False)
    raw = _blob(rows, "item_vectors")
    dense = _cell(rows, "dense_weights")[0].as_py()
    new_items = dict(
        zip(_cell(rows, "new_item_ids")[0].as_py(), _cell(rows, "new_item_indices")[0].as_py(), strict=True)
    )
    offsets = dict(
        zip(_cell(rows, "kafka_partitions")[0].as_py(), _cell(rows, "kafka_offsets")[0].as_py(), strict=True)
    )
    silver_version = int(_cell(rows, "silver_version")[0].as_py())
    published_ms = int(_cell(rows, "published_ms")[0].as_py())
    previous = str(_cell(rows, "previous_checksum")[0].as_py())
    stored = str(_cell(rows, "checksum")[0].as_py())
    computed = _checksum(
        model, base_version, sequence, width, indices, raw, dense, new_items, silver_version, offsets,
        published_ms, previous,
    )  # fmt: skip
    if computed != stored:
        raise ChecksumMismatch(
            model, base_version, sequence, f"payload hashes to {computed[:12]}..., stored {stored[:12]}..."
        )
    if width < 1 or raw.size != indices.size * width * 4:
        raise MalformedDelta(model, base_version, sequence, f"{raw.size} bytes of vectors for {indices.size} x {width}")
    vectors = raw.view("<f4").astype(np.float32, copy=False).reshape(indices.size, width)
    return ModelDelta(
        model, base_version, sequence, indices, vectors, dense, new_items, silver_version, offsets,
        published_ms, previous, stored,
    )  # fmt: skip


# The table ----------------------------------------------------------------------------------
class ModelDeltaTable:
    """The models/deltas table at ``uri`` (``settings.table_uri(MODEL_DELTAS_TABLE)``).

    Keeps its ``DeltaTable`` between calls and refreshes it incrementally, so a replica polling
    every second reads only the new log entries. One object per thread.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._table: DeltaTable | None = None

    def last(self, model: str, base_version: int) -> DeltaPosition:
        """The position after the last published delta of ``base_version`` (sequence 0 if none):
        where a restarted writer resumes."""
        return self._last(self._refresh(), model, base_version)[0]

    def publish(self, delta: ModelDelta) -> int:
        """Append ``delta`` in one commit (creating the table on first use); returns the table version.

        Refuses (``SequenceConflict``) a delta that is not the next of its base, including one that
        loses a race to a concurrent writer, and (``WidthMismatch``) one whose width differs from
        the base's earlier deltas; ``ChecksumMismatch`` if its checksum is not its content's.
        """
        delta.verify_checksum()
        table = self._refresh() or self._create()
        last, width = self._last(table, delta.model, delta.base_version)
        if delta.sequence != last.sequence + 1:
            raise SequenceConflict(delta, last.sequence + 1, f"the last delta of this base is #{last.sequence}")
        if delta.previous_checksum != last.checksum:
            raise SequenceConflict(
                delta, last.sequence + 1, f"built after another delta #{last.sequence} than the table's"
            )
        if width is not None and delta.width != width:
            raise WidthMismatch(delta.model, delta.base_version, delta.sequence, width, delta.width)
        record = CommitProperties(
            app_transactions=[Transaction(_app_id(delta.model, delta.base_version), delta.sequence)]
        )
        try:
            # The same DeltaTable whose snapshot the checks above read: delta-rs checks the
            # commits that landed since then against ours, and refuses ours on a shared app id.
            write_deltalake(
                table, _to_arrow(delta), mode="append", partition_by=PARTITION_COLUMNS,
                writer_properties=_WRITER, commit_properties=record,
            )  # fmt: skip
        except CommitFailedError as error:
            now = self.last(delta.model, delta.base_version)
            raise SequenceConflict(delta, now.sequence + 1, f"another writer committed first ({error})") from error
        return table.version()

    def after(
        self, position: DeltaPosition, *, width: int, table_rows: int | None = None, limit: int | None = None
    ) -> Iterator[ModelDelta]:
        """The deltas of ``position``'s base after ``position.sequence``, in order, each checked;
        at most ``limit`` of them. Deltas at or before ``position`` are not opened.

        A base with no deltas (none published yet, or unknown to the table) yields nothing. The
        first delta that breaks a rule raises an ``InvalidDelta`` naming it (after the good ones
        before it were yielded): ``SequenceGap``, ``WidthMismatch`` (against ``width``),
        ``DuplicateItems``, ``ChecksumMismatch``, ``UnreadableDelta``, ``BrokenChain``,
        ``MalformedDelta`` (also: an index >= ``table_rows``, when given). ``StalePosition`` if
        the table holds fewer deltas of the base than ``position`` has applied. Deltas are read
        one at a time as the iterator advances (errors too), so a long catch-up holds one payload.
        """
        table = self._refresh()
        model, base = position.model, position.base_version
        last = 0 if table is None else table.transaction_version(_app_id(model, base)) or 0
        if last < position.sequence:
            raise StalePosition(position, last)
        if table is None or last == position.sequence:
            return
        stop = last if limit is None else min(last, position.sequence + limit)
        previous = position
        for sequence in range(position.sequence + 1, stop + 1):
            delta = self._read(table, model, base, sequence)
            if delta.width != width:
                raise WidthMismatch(model, base, sequence, width, delta.width)
            if delta.previous_checksum != previous.checksum:
                raise BrokenChain(
                    model, base, sequence, f"does not follow {previous} (checksum {previous.checksum[:12]})"
                )
            if table_rows is not None and delta.item_indices.size and int(delta.item_indices.max()) >= table_rows:
                raise MalformedDelta(
                    model, base, sequence, f"item index {delta.item_indices.max()} >= {table_rows} rows"
                )
            yield delta
            previous = delta.position

    def drop(self, model: str, base_version: int) -> int:
        """Delete every delta of ``base_version`` in one commit (rollback, or a new registered
        version replacing the base); its sequences start again at 1. Returns how many were dropped."""
        table = self._refresh()
        if table is None:
            return 0
        DeltaPosition(model, base_version)  # checks the name before it enters the predicate
        record = CommitProperties(app_transactions=[Transaction(_app_id(model, base_version), 0)])
        metrics = table.delete(f"model = '{model}' AND base_version = {base_version}", commit_properties=record)
        return int(metrics.get("num_deleted_rows", 0))

    # Internals ---------------------------------------------------------------------------------
    def _refresh(self) -> DeltaTable | None:
        if self._table is None:
            if not DeltaTable.is_deltatable(self.uri):
                return None
            self._table = DeltaTable(self.uri)
        else:
            self._table.update_incremental()
        return self._table

    def _create(self) -> DeltaTable:
        try:
            DeltaTable.create(
                self.uri, MODEL_DELTAS_SCHEMA, mode="ignore", partition_by=PARTITION_COLUMNS, name="model deltas"
            )
        except DeltaLakeError:
            if not DeltaTable.is_deltatable(self.uri):  # else another writer created it first
                raise
        table = self._refresh()
        assert table is not None
        return table

    def _last(self, table: DeltaTable | None, model: str, base_version: int) -> tuple[DeltaPosition, int | None]:
        """The base's last position and the width of its deltas (None before the first)."""
        sequence = 0 if table is None else table.transaction_version(_app_id(model, base_version)) or 0
        if table is None or sequence == 0:
            return DeltaPosition(model, base_version), None
        rows = self._rows(table, model, base_version, "=", sequence, ["width", "checksum"])
        if rows.num_rows != 1:
            raise SequenceGap(model, base_version, sequence, f"recorded in the log, but {rows.num_rows} rows hold it")
        checksum = str(rows.column("checksum")[0].as_py())
        return DeltaPosition(model, base_version, sequence, checksum), int(rows.column("width")[0].as_py())

    def _rows(
        self, table: DeltaTable, model: str, base_version: int, op: str, sequence: int, columns: list[str] | None
    ) -> pa.Table:
        """Rows of one base whose sequence is ``op`` (``=`` or ``>``) ``sequence``. Files are pruned
        by partition and by their sequence statistics before any is opened; the row filter repeats
        the condition for files holding several deltas (after an OPTIMIZE)."""
        pruning = f"model = '{model}' AND base_version = {base_version} AND sequence {op} {sequence}"
        compare = pc.field("sequence") == sequence if op == "=" else pc.field("sequence") > sequence
        rows = (pc.field("model") == model) & (pc.field("base_version") == base_version) & compare
        return table.to_pyarrow_dataset(file_pruning_predicate=pruning).to_table(columns=columns, filter=rows)

    def _read(self, table: DeltaTable, model: str, base_version: int, sequence: int) -> ModelDelta:
        try:
            rows = self._rows(table, model, base_version, "=", sequence, None)
        except (OSError, pa.ArrowException) as error:
            raise UnreadableDelta(model, base_version, sequence, str(error)) from error
        if rows.num_rows != 1:
            problem = "no row holds it" if rows.num_rows == 0 else f"{rows.num_rows} rows hold it"
            raise SequenceGap(model, base_version, sequence, f"the log records it, but {problem}")
        return _from_arrow(rows, model, base_version, sequence)


def _app_id(model: str, base_version: int) -> str:
    """The Delta app transaction whose version is the last sequence of the base's deltas."""
    return f"streamrec.model_deltas.{model}.v{base_version}"

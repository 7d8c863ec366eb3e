"""A replica applies the model deltas of its base version: item rows, new items, encoder weights.

The follow job publishes deltas to ``models/deltas`` (``training.streaming.deltas``); each
replica's ``DeltaFollower`` tails the deltas of the (model, base version) it serves, every
``serve.delta_poll_s`` seconds in a daemon thread, and applies them in sequence. A delta is
applied beside the request path, copy-on-write: ``apply_delta`` builds a new ``Catalog`` that
shares what the delta leaves alone (popularity, feature versions, the encoder when no dense
weights came, the vocabulary when no item is new) and holds new copies of what it changes (the
item rows, the FAISS index, the vocabulary); then one reference assignment publishes it. A
request takes one catalog per batch, so it sees the state before a delta or after it, never a
mix. The index:

* exact (``IndexFlatIP``, or fp16 codes for a prefix): a clone whose changed rows are overwritten
  and new items appended, so FAISS id = item index - 1 still holds;
* HNSW: a clone in which each changed item is added again as a new node and its old node hidden
  from results (an HNSW node cannot be moved: a vector overwritten in place keeps the links of
  its old neighbourhood, and searches near its new one do not reach it); past
  ``serve.delta_rebuild_fraction`` hidden nodes the graph is rebuilt, still beside the request path.

A two-stage catalog (``Catalog.prefix_dims``) gets each changed row's normalised prefix in its
index, by the same rules, and rescores from the new full-width rows.

Refused (logged, /healthz ``degraded`` with the reason, the last good state serving on): what
``ModelDeltaTable.after`` refuses (``SequenceGap``, ``WidthMismatch``, ``ChecksumMismatch``,
``BrokenChain``, ...), what this module refuses (``UnappliableDelta``: rows beyond the
catalogue that name no new item, a new item that contradicts the vocabulary, dense weights that
do not fit the encoder), and deltas published to another base of the model while this one
serves. A refused delta is read again only once the table's last delta of the base changes.
Deltas this replica applied that were dropped (``StalePosition``, or ``BrokenChain`` right after
its position) while the alias still names the base: the replica reloads the base and applies
what the table holds now. A new base (the alias moved) starts from its own deltas.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from deltalake import DeltaTable

from serving.catalog import Catalog, build_index, index_filter, overwrite_rows
from serving.index import prefix_rows
from training.retrieval.retriever import Retriever
from training.streaming.deltas import (
    BrokenChain,
    DeltaPosition,
    InvalidDelta,
    ModelDelta,
    ModelDeltaError,
    ModelDeltaTable,
    StalePosition,
)
from training.streaming.dense import decode_dense_weights

logger = logging.getLogger("ray.serve.streamrec")  # into the replica logs of Ray Serve
RECENT_APPLIES = 20  # kept for /healthz


class UnappliableDelta(InvalidDelta):
    """A delta the table accepts that this replica's catalogue cannot take (serving's own checks)."""


@dataclass(frozen=True)
class IndexParams:
    """How a replica builds its FAISS index (``serve`` settings), for the rebuild past the threshold."""

    exact_max_items: int
    hnsw_m: int
    ef_search: int
    rebuild_fraction: float
    prefix_codec: str = "flat"  # an exact prefix index's codec (``build_index``; the full-width one is flat)


@dataclass(frozen=True)
class AppliedDelta:
    """One delta applied: its sequence, what it held, and when it was published and served."""

    base_version: int
    sequence: int
    rows: int
    new_items: int
    dense: bool
    published_ms: int
    applied_ms: int
    apply_seconds: float


def apply_delta(catalog: Catalog, delta: ModelDelta, params: IndexParams) -> Catalog:
    """A new catalog: ``catalog`` with ``delta`` applied (``catalog`` itself is not changed).
    Raises ``UnappliableDelta`` when the delta does not fit the catalogue."""
    position = catalog.delta
    if position is None or (delta.model, delta.base_version) != (position.model, position.base_version):
        raise UnappliableDelta(delta.model, delta.base_version, delta.sequence, f"the catalog is at {position}")
    if delta.sequence != position.sequence + 1 or delta.previous_checksum != position.checksum:
        raise UnappliableDelta(delta.model, delta.base_version, delta.sequence, f"does not follow {position}")
    rows = delta.item_indices
    old_items = catalog.num_items
    item_ids, index_of = _vocabulary(catalog, delta)
    new_items = len(item_ids) - 1
    retriever = catalog.retriever
    encoder = retriever.encoder if delta.dense_weights is None else _swapped_encoder(retriever, delta)
    item_rows = torch.zeros((new_items + 1, retriever.item_rows.shape[1]), dtype=retriever.item_rows.dtype)
    item_rows[: old_items + 1] = retriever.item_rows
    item_rows[torch.tensor(rows)] = torch.tensor(delta.item_vectors, dtype=item_rows.dtype)  # copies: read-only views
    updated = Retriever(encoder, item_rows, retriever.info)
    index_state = _updated_index(catalog, updated, rows, item_ids, params)
    return dataclasses.replace(
        catalog, retriever=updated, item_ids=item_ids, index_of=index_of, delta=delta.position, **index_state
    )


def _vocabulary(catalog: Catalog, delta: ModelDelta) -> tuple[np.ndarray, dict[str, int]]:
    """The item ids and their index after ``delta``: the catalog's own (shared) when it names no
    new item, else grown copies. Rows beyond the catalogue must be new items; a new item must not
    contradict the vocabulary (an index never changes meaning)."""
    rows, item_ids, index_of = delta.item_indices, catalog.item_ids, catalog.index_of
    refuse = lambda problem: UnappliableDelta(delta.model, delta.base_version, delta.sequence, problem)  # noqa: E731
    named = np.fromiter(delta.new_items.values(), np.int64, len(delta.new_items))
    blank = np.ones(rows.size, bool)  # rows beyond the catalogue, and rows of items no delta named yet
    inside = rows <= catalog.num_items
    blank[inside] = item_ids[rows[inside]] == ""
    unnamed = rows[blank & ~np.isin(rows, named)]
    if unnamed.size:
        raise refuse(f"rows {unnamed[:5].tolist()} hold no known item and name no new item ({catalog.num_items} items)")
    for item, index in delta.new_items.items():
        if index_of.get(item, index) != index:
            raise refuse(f"new item {item!r} at index {index}, but the vocabulary has it at {index_of[item]}")
        if index <= catalog.num_items and item_ids[index] not in ("", item):
            raise refuse(f"new item {item!r} at index {index}, which is {item_ids[index]!r}'s")
    if not delta.new_items:
        return item_ids, index_of
    size = max(catalog.num_items, int(named.max()))
    grown = np.full(size + 1, "", dtype=object)  # indices between that no delta named yet: ""
    grown[: len(item_ids)] = item_ids
    index_of = dict(index_of)
    for item, index in delta.new_items.items():
        grown[index] = item
        index_of[item] = index
    return grown, index_of


def _swapped_encoder(retriever: Retriever, delta: ModelDelta) -> Any:
    """A copy of the retriever's encoder with the delta's dense weights (every one of them)."""
    try:
        state = decode_dense_weights(delta.dense_weights or b"")
        encoder = copy.deepcopy(retriever.encoder)
        encoder.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError, TypeError, OSError, EOFError) as error:  # torch.load and load_state_dict
        raise UnappliableDelta(
            delta.model, delta.base_version, delta.sequence, f"dense weights do not fit the encoder: {error}"
        ) from error
    return encoder.eval()


def _updated_index(
    catalog: Catalog, retriever: Retriever, rows: np.ndarray, item_ids: np.ndarray, params: IndexParams
) -> dict[str, Any]:
    """The index fields of the new catalog: a changed copy of the catalog's index, or a rebuilt one."""
    import faiss

    vectors = retriever.item_vectors.numpy()

    def indexed(rows: Any) -> np.ndarray:  # what the index holds of these item rows (a prefix, or the rows)
        return prefix_rows(vectors[rows], catalog.prefix_dims, retriever.scoring)

    unknown = np.asarray(item_ids[1:] == "", dtype=bool)  # rows no delta named yet
    if catalog.index_kind == "exact":
        index: Any = faiss.clone_index(catalog.index)
        grown = retriever.num_items - index.ntotal
        if grown:
            index.add(np.zeros((grown, index.d), dtype=np.float32))
        overwrite_rows(index, rows - 1, indexed(rows))
        return {"index": index, "index_labels": None, "index_filter": index_filter(index, unknown)}
    labels = catalog.index_labels
    labels = np.arange(1, catalog.index.ntotal + 1) if labels is None else labels
    hidden = np.zeros(catalog.index.ntotal, bool) if catalog.index_filter is None else catalog.index_filter.hidden
    hidden = hidden.copy()
    hidden[np.isin(labels, rows)] = True  # the changed items' old nodes (a new item has none)
    known = np.concatenate([[False], ~unknown])
    stale = int((hidden & known[labels]).sum())  # nodes of known items that searches skip
    if stale > params.rebuild_fraction * retriever.num_items:
        codec = params.prefix_codec if catalog.prefix_dims else "flat"
        index, kind = build_index(
            indexed(slice(1, None)), params.exact_max_items, params.hnsw_m, params.ef_search, codec
        )
        logger.info("model deltas: %d stale HNSW nodes, index rebuilt (%s, %d items)", stale, kind, index.ntotal)
        return {"index": index, "index_kind": kind, "index_labels": None, "index_filter": index_filter(index, unknown)}
    index = faiss.clone_index(catalog.index)
    index.add(indexed(rows))
    labels = np.concatenate([labels, rows])
    hidden = np.concatenate([hidden, np.zeros(len(rows), bool)])
    return {"index": index, "index_labels": labels, "index_filter": index_filter(index, hidden)}


@dataclass(frozen=True)
class Followed:
    """What the follower serves for one base catalog (the watcher's): that catalog advanced by deltas."""

    base: Catalog
    current: Catalog


class DeltaFollower:
    """Tails the deltas of the served base and publishes the advanced catalog as one reference.

    The replica's ``ModelWatcher`` owns the base (the alias's version, loaded through
    ``caught_up`` so a new or restarted replica starts at the newest delta); the follower thread
    advances it, and ``serving`` gives requests the advanced catalog of the base the watcher
    serves now (the base itself until the follower has one for it)."""

    def __init__(
        self,
        table_uri: str,
        model: str,
        params: IndexParams,
        *,
        poll_s: float,
        resolve: Callable[[], str | None],
        reload: Callable[[str], Catalog],
        on_apply: Callable[[AppliedDelta], None] | None = None,
    ) -> None:
        self._uri = table_uri
        self._model = model
        self._params = params
        self._poll_s = poll_s
        self._resolve = resolve
        self._reload = reload
        self._on_apply = on_apply
        self._tables: dict[int, ModelDeltaTable] = {}  # one per thread: ModelDeltaTable is not shared
        self._bases: DeltaTable | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._followed: Followed | None = None
        self._refused: tuple[DeltaPosition, DeltaPosition | None] | None = None  # (where we stood, the table's last)
        self._serving_since: tuple[int, float] | None = None  # (base version, wall time it started serving)
        self.last_error: str | None = None
        self.foreign_error: str | None = None
        self.applied: tuple[AppliedDelta, ...] = ()

    # What requests and /healthz read ------------------------------------------------------------
    def serving(self, base: Catalog) -> Catalog:
        """The catalog to answer from while the watcher serves ``base``."""
        followed = self._followed
        return followed.current if followed is not None and followed.base is base else base

    @property
    def error(self) -> str | None:
        """Why /healthz says degraded about deltas (None: every delta published was applied)."""
        return self.last_error or self.foreign_error

    def status(self) -> dict[str, Any]:
        return {
            "poll_s": self._poll_s,
            "last_error": self.error,
            "applied": [dataclasses.asdict(record) for record in self.applied],
        }

    # Applying ------------------------------------------------------------------------------------
    def caught_up(self, catalog: Catalog) -> Catalog:
        """``catalog`` (a freshly loaded base) with every delta the table holds for it applied; a
        refused delta stops there (the catalog serves what came before it, the error says why)."""
        if catalog.delta is None:
            try:
                catalog = dataclasses.replace(catalog, delta=DeltaPosition(self._model, int(catalog.version)))
            except ValueError as error:
                self.last_error = f"model deltas are not followed: {error}"
                logger.error(self.last_error)
                return catalog
        try:
            return self._advance(catalog)
        except Exception as error:  # the lake unreadable: serve the base (loading it must not fail for this)
            self.last_error = f"cannot read model deltas, serving {catalog.delta} without them: {error}"
            logger.error(self.last_error)
            return catalog

    def follow_once(self, base: Catalog) -> Catalog:
        """One poll while the watcher serves ``base``: apply what is new, publish, return what serves."""
        followed = self._followed
        current = followed.current if followed is not None and followed.base is base else base
        if current.delta is None:
            return current
        if self._serving_since is None or self._serving_since[0] != current.delta.base_version:
            self._serving_since = (current.delta.base_version, time.time())
        try:
            advanced = self._advance(current)
        except (StalePosition, BrokenChain) as dropped:
            advanced = self._after_drop(current, dropped)
        if advanced is not current or followed is None or followed.base is not base:
            self._followed = Followed(base, advanced)  # the swap: one reference assignment
        self._check_other_bases(advanced.delta)
        return advanced

    def start(self, current_base: Callable[[], Catalog | None]) -> None:
        """Poll every ``poll_s`` seconds in a daemon thread, following ``current_base()``."""

        def run() -> None:
            while not self._stop.wait(self._poll_s):
                base = current_base()
                if base is None:
                    continue
                try:
                    self.follow_once(base)
                except Exception as error:  # the lake may be briefly unreadable: keep serving, say why
                    self.last_error = f"cannot read model deltas: {error}"
                    logger.warning(self.last_error)

        self._thread = threading.Thread(target=run, name="delta-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _table(self) -> ModelDeltaTable:
        return self._tables.setdefault(threading.get_ident(), ModelDeltaTable(self._uri))

    def _advance(self, catalog: Catalog) -> Catalog:
        """``catalog`` with the deltas after its position applied, up to the first refused one."""
        position = catalog.delta
        assert position is not None
        table = self._table()
        if self._refused is not None:
            if self._refused[0] != position:
                self._refused = None  # moved on since (a new base, a reload): that refusal is history
            elif self._last(position) == self._refused[1]:
                return catalog  # nothing published or dropped since the refusal: do not read the bad delta again
            else:
                self._refused = None
        try:
            for delta in table.after(position, width=catalog.retriever.item_rows.shape[1]):
                started = time.perf_counter()
                catalog = apply_delta(catalog, delta, self._params)
                self._record(delta, time.perf_counter() - started)
        except BrokenChain as error:
            if error.sequence == position.sequence + 1 and position.sequence > 0:
                raise  # the deltas this replica applied were dropped and others published
            self._refuse(catalog, error)
            return catalog
        except InvalidDelta as error:
            self._refuse(catalog, error)
            return catalog
        self.last_error = None
        return catalog

    def _last(self, position: DeltaPosition) -> DeltaPosition | None:
        """The table's last delta of the base; None when that delta itself is refused (a gap at the end)."""
        try:
            return self._table().last(position.model, position.base_version)
        except InvalidDelta:
            return None

    def _record(self, delta: ModelDelta, seconds: float) -> None:
        record = AppliedDelta(
            delta.base_version, delta.sequence, int(delta.item_indices.size), len(delta.new_items),
            delta.dense_weights is not None, delta.published_ms, time.time_ns() // 1_000_000, seconds,
        )  # fmt: skip
        self.applied = (*self.applied, record)[-RECENT_APPLIES:]
        if self._on_apply is not None:
            self._on_apply(record)
        logger.info(
            "model delta %s v%d #%d applied: %d rows, %d new items%s, %.0f ms after its publish",
            delta.model, delta.base_version, delta.sequence, record.rows, record.new_items,
            ", dense weights" if record.dense else "", record.applied_ms - delta.published_ms,
        )  # fmt: skip

    def _refuse(self, catalog: Catalog, error: InvalidDelta) -> None:
        position = catalog.delta
        assert position is not None
        self._refused = (position, self._last(position))
        message = f"{error}; refused, still serving {position}"
        if message != self.last_error:
            logger.error("model delta refused: %s", message)
        self.last_error = message

    def _after_drop(self, current: Catalog, dropped: ModelDeltaError) -> Catalog:
        """The deltas ``current`` holds were dropped: when the alias still names its base, reload
        the base and apply what the table holds now; else keep serving until the watcher swaps."""
        position = current.delta
        assert position is not None
        try:
            named = self._resolve()
        except Exception:  # the registry does not answer: the watcher says so; decide at the next poll
            return current
        if named != str(position.base_version):
            return current  # a rollback or a promotion: the watcher loads the new version
        logger.warning("model deltas: %s; reloading version %d", dropped, position.base_version)
        return self.caught_up(self._reload(current.version))

    def _check_other_bases(self, position: DeltaPosition | None) -> None:
        """Deltas written to another base of this model since this replica serves its base: not
        applied (they do not fit this model), reported (the follow job follows another version)."""
        if position is None or self._serving_since is None:
            return
        if self._bases is None:
            if not DeltaTable.is_deltatable(self._uri):
                return
            self._bases = DeltaTable(self._uri)
        else:
            self._bases.update_incremental()
        columns = ["partition.model", "partition.base_version", "max.published_ms"]
        files = pa.table(self._bases.get_add_actions(flatten=True)).select(columns).to_pydict()
        since_ms = int(self._serving_since[1] * 1000)
        others = sorted(
            {
                int(base)
                for model, base, published in zip(*(files[column] for column in columns), strict=True)
                if model == position.model and base != position.base_version and (published or 0) >= since_ms
            }
        )
        message = (
            f"model deltas published for version(s) {others} of {position.model}, which this replica does not "
            f"serve (it serves v{position.base_version}): not applied"
            if others
            else None
        )
        if message is not None and message != self.foreign_error:
            logger.error(message)
        self.foreign_error = message

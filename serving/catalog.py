"""A servable model version: the Retriever, the item ids of its vocabulary and a FAISS index.

``load_catalog`` runs beside the request path (a replica's model watcher): it downloads a
registered version, builds the plain Retriever (no TorchRec), reads ``features/item_vocab``
at the version the model was trained on, and indexes the item vectors as the model scores them
(``Retriever.item_vectors``: L2-normalised under cosine scoring, raw under dot):

* up to ``serve_exact_max_items`` items: exact inner product (``IndexFlatIP``);
* above: HNSW (``IndexHNSWFlat``, inner product), recall measured in ``benchmarks/serve``.

With ``serve.prefix_dims`` (a model trained with ``--matryoshka-dims``; ``serving.index``) the
index holds each item's normalised prefix and a search rescores its ``serve.rescore`` best
candidates at the full width. The model's score of the query and the item rows (cosine similarity
or dot product, ``EncoderConfig.scoring``) is the score, as in training's loss and evaluation; an
inner-product index is exact for both (HNSW's recall was measured on unit vectors only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_args

import numpy as np
import pyarrow.compute as pc
import torch
from deltalake import DeltaTable

from features.tables import ITEM_STATS_TABLE, ITEM_VOCAB_TABLE
from infra.errors import StreamrecError
from infra.settings import IndexCodec, Settings
from ingestion.schema import ACTION_IDS, POSITIVE_ACTIONS
from serving.index import prefix_rows, rescored, served_prefix
from training.common import tracking
from training.retrieval.retriever import Retriever
from training.streaming.deltas import DeltaPosition

CODECS: tuple[str, ...] = get_args(IndexCodec)  # how an exact index stores its rows (build_index)
KnownEvents = list[tuple[int, str, int]]  # (item index, action, ts), oldest first


class CatalogError(StreamrecError):
    """A model version cannot be served (missing, unreadable, inconsistent with the lake)."""


@dataclass(frozen=True)
class IndexFilter:
    """FAISS ids a search never returns (HNSW nodes whose item was re-added since, rows of items
    not known yet), as the search parameters FAISS filters with while it searches."""

    hidden: np.ndarray  # bool per FAISS id
    params: Any  # faiss.SearchParameters(HNSW) with an IDSelectorBitmap of the other ids
    keep: tuple[Any, ...]  # the selector and its bitmap: FAISS holds raw pointers to them


def index_filter(index: Any, hidden: np.ndarray) -> IndexFilter | None:
    """The filter hiding the FAISS ids where ``hidden`` is true from searches of ``index``; None
    when nothing is hidden (the search then runs without parameters, as before any delta)."""
    if not hidden.any():
        return None
    import faiss

    bits = np.packbits(~hidden, bitorder="little")  # the ids a search may return
    selector = faiss.IDSelectorBitmap(len(hidden), faiss.swig_ptr(bits))
    params: Any
    if hasattr(index, "hnsw"):
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # not in faiss's stubs
        params.efSearch = index.hnsw.efSearch  # parameters replace the index's own efSearch
    else:
        params = faiss.SearchParameters()
    params.sel = selector
    return IndexFilter(hidden, params, (selector, bits))


@dataclass
class Catalog:
    """Everything one model version needs to answer requests; immutable once built."""

    version: str
    run_id: str
    retriever: Retriever
    item_ids: np.ndarray  # object array, index i = item index i (0 = padding, "")
    index_of: dict[str, int]
    index: Any  # faiss.Index over item indices 1..num_items (faiss id = item index - 1)
    index_kind: str
    feature_versions: dict[str, int]
    popular: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # item indices, most popular first
    popular_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # their positive events
    delta: DeltaPosition | None = None  # the base version and the model deltas applied to it (serving.deltas)
    index_labels: np.ndarray | None = None  # FAISS id -> item index, where it is not id + 1 (HNSW after deltas)
    index_filter: IndexFilter | None = None  # FAISS ids never returned
    prefix_dims: int = 0  # the index holds each item's normalised first prefix_dims dims (0: the full rows)
    rescore: int = 0  # with a prefix: candidates per query the index returns, rescored at the full width

    @property
    def num_items(self) -> int:
        return self.retriever.num_items

    def known(self, events: Iterable[tuple[str, str, int]]) -> KnownEvents:
        """(item index, action, ts) of the ``events`` (item id, action, ts) whose item this version
        knows, in order; the others (newer items) are left out of every query."""
        index_of = self.index_of
        return [(index_of[item], action, ts) for item, action, ts in events if item in index_of]

    def encode(self, histories: list[KnownEvents]) -> np.ndarray:
        """(B, D) float32 queries of histories of (item index, action, ts), oldest first."""
        max_len = self.retriever.max_len
        cut = [history[-max_len:] for history in histories]
        width = max(1, max((len(history) for history in cut), default=1))
        items = torch.zeros((len(cut), width), dtype=torch.long)
        actions = torch.zeros((len(cut), width), dtype=torch.long)
        stamps = torch.zeros((len(cut), width), dtype=torch.long)
        lengths = torch.tensor([len(history) for history in cut], dtype=torch.long)
        for row, history in enumerate(cut):
            if history:
                items[row, : len(history)] = torch.tensor([event[0] for event in history])
                actions[row, : len(history)] = torch.tensor([ACTION_IDS[event[1]] for event in history])
                stamps[row, : len(history)] = torch.tensor([event[2] for event in history])
        batch = {"item_indices": items, "action_ids": actions, "timestamps": stamps, "lengths": lengths}
        return self.retriever.queries(batch).numpy().astype(np.float32, copy=False)

    def search(self, queries: np.ndarray, k: int, exclude: list[set[int]]) -> list[list[tuple[int, float]]]:
        """Per query the best ``k`` (item index, score) pairs whose index is not in ``exclude[row]``."""
        wanted = min(self.num_items, k + max((len(items) for items in exclude), default=0))
        if wanted <= 0 or len(queries) == 0:
            return [[] for _ in range(len(queries))]
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.prefix_dims:
            depth = min(self.index.ntotal, max(wanted, self.rescore))
            _, ids = self._search_index(prefix_rows(queries, self.prefix_dims, self.retriever.scoring), depth)
            scores, items = rescored(self._items_of(ids), queries, self.retriever.item_vectors.numpy())
        else:
            scores, ids = self._search_index(queries, wanted)
            items = self._items_of(ids)
        results = []
        for row in range(len(queries)):
            found = []
            for item, score in zip(items[row].tolist(), scores[row].tolist(), strict=True):
                if item < 0 or item in exclude[row]:
                    continue
                found.append((item, float(score)))
                if len(found) == k:
                    break
            results.append(found)
        return results

    def _search_index(self, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's (scores, ids) of the ``depth`` nearest, hidden ids left out."""
        hiding = self.index_filter
        if hiding is None:
            return self.index.search(queries, depth)
        return self.index.search(queries, depth, params=hiding.params)

    def _items_of(self, ids: np.ndarray) -> np.ndarray:
        """Item indices of FAISS ids (-1 stays -1: fewer results than asked for)."""
        labels = self.index_labels
        items = ids + 1 if labels is None else labels[np.maximum(ids, 0)]
        return np.where(ids < 0, -1, items)

    def popular_items(self, k: int, exclude: set[int]) -> list[tuple[int, float]]:
        """The cold-start list: the most popular items, scored by their positive events, ``exclude`` left out."""
        chosen = []
        for item, count in zip(self.popular.tolist(), self.popular_counts.tolist(), strict=True):
            if item in exclude:
                continue
            chosen.append((int(item), float(count)))
            if len(chosen) == k:
                break
        return chosen


Loaded = TypeVar("Loaded")


def load_registered(settings: Settings, model: str, version: str, load: Callable[[Path], Loaded]) -> Loaded:
    """``load`` of the downloaded directory of version ``version`` of registered ``model``;
    a missing or unreadable version raises CatalogError (the download is removed after)."""
    try:
        with tracking.downloaded_version(settings, version, model=model) as directory:
            return load(directory)
    except LookupError as error:
        raise CatalogError(str(error)) from error
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise CatalogError(f"version {version} of {model} does not load: {error}") from error


def load_catalog(settings: Settings, version: str, *, exact_max_items: int, hnsw_m: int, ef_search: int) -> Catalog:
    """Download registered version ``version`` of ``settings.mlflow.registered_model`` and make it servable."""
    retriever = load_registered(settings, settings.mlflow.registered_model, version, Retriever.from_directory)
    info = retriever.info
    if info is None:
        raise CatalogError(f"version {version} of {settings.mlflow.registered_model} has no model.json")
    try:
        exact = info.num_items <= settings.serve.exact_max_items  # the index build_index will choose
        prefix = served_prefix(settings.serve.prefix_dims, info.encoder.matryoshka_dims, info.encoder.dim, exact)
    except ValueError as error:
        model = settings.mlflow.registered_model
        raise CatalogError(f"version {version} of {model} is not servable: {error}") from error
    run_id = tracking.client(settings).get_model_version(settings.mlflow.registered_model, version).run_id or ""
    vocab_version = info.feature_versions.get(ITEM_VOCAB_TABLE)
    item_ids = read_item_ids(settings, vocab_version, retriever.num_items)
    popular = read_popularity(settings, retriever.num_items)
    vectors = prefix_rows(retriever.item_vectors[1:].numpy(), prefix, retriever.scoring)
    codec = settings.serve.prefix_codec if prefix else "flat"
    index, kind = build_index(vectors, exact_max_items, hnsw_m, ef_search, codec)
    return Catalog(
        version=str(version),
        run_id=run_id,
        retriever=retriever,
        item_ids=item_ids,
        index_of={item: position for position, item in enumerate(item_ids.tolist()) if position},
        index=index,
        index_kind=kind,
        feature_versions=dict(info.feature_versions),
        popular=popular[0],
        popular_counts=popular[1],
        prefix_dims=prefix,
        rescore=settings.serve.rescore if prefix else 0,
    )


def read_item_ids(settings: Settings, version: int | None, num_items: int) -> np.ndarray:
    """item_ids[i] = the item id of index i (1..num_items) in features/item_vocab at ``version``."""
    uri = settings.table_uri(ITEM_VOCAB_TABLE)
    if not DeltaTable.is_deltatable(uri):
        raise CatalogError(f"no {ITEM_VOCAB_TABLE} table at {uri}: the model's vocabulary is not in this lake")
    vocab = DeltaTable(uri, version=version).to_pyarrow_dataset().to_table(columns=["item_id", "item_index"])
    indices = vocab["item_index"].to_numpy()
    if len(vocab) < num_items or indices.max(initial=0) < num_items:
        raise CatalogError(f"{ITEM_VOCAB_TABLE} v{version} has {len(vocab)} items, the model knows {num_items}")
    item_ids = np.full(num_items + 1, "", dtype=object)
    known = indices <= num_items
    item_ids[indices[known]] = np.asarray(vocab["item_id"].to_numpy(zero_copy_only=False), dtype=object)[known]
    return item_ids


def read_popularity(settings: Settings, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(item indices <= num_items, their positive events) from features/item_stats, most positive first."""
    uri = settings.table_uri(ITEM_STATS_TABLE)
    if not DeltaTable.is_deltatable(uri):
        return np.arange(1, num_items + 1), np.zeros(num_items, np.int64)
    columns = [f"{action}_count" for action in sorted(POSITIVE_ACTIONS)]
    stats = DeltaTable(uri).to_pyarrow_dataset().to_table(columns=["item_index", *columns])
    stats = stats.filter(pc.less_equal(stats["item_index"], num_items))
    positives = np.zeros(len(stats), dtype=np.int64)
    for column in columns:
        positives += stats[column].to_numpy()
    order = np.lexsort((stats["item_index"].to_numpy(), -positives))  # most positives first, ties by index
    return stats["item_index"].to_numpy()[order], positives[order]


def build_index(
    vectors: np.ndarray, exact_max_items: int, hnsw_m: int, ef_search: int, codec: str = "flat"
) -> tuple[Any, str]:
    """A FAISS inner-product index over ``vectors`` (rows = item indices 1..N): exact or HNSW.

    ``codec`` is how an exact index stores the rows: ``flat`` (float32, ``IndexFlatIP``) or
    ``fp16`` (``IndexScalarQuantizer`` QT_fp16: half the bytes, so half the memory a scan reads;
    serving uses it for a two-stage prefix index, whose candidates are rescored at full width)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if len(vectors) <= exact_max_items:
        exact: Any
        if codec == "flat":
            exact = faiss.IndexFlatIP(dim)
        elif codec == "fp16":
            exact = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        else:
            raise ValueError(f"unknown index codec {codec!r}; allowed: {', '.join(CODECS)}")
        exact.add(vectors)
        return exact, "exact"
    graph = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = max(2 * hnsw_m, 80)
    graph.hnsw.efSearch = ef_search
    graph.add(vectors)
    return graph, "hnsw"


def overwrite_rows(index: Any, positions: np.ndarray, vectors: np.ndarray) -> None:
    """Replace rows ``positions`` (FAISS ids) of an exact index (``build_index``, either codec)
    with ``vectors``, in place; the ids stay where they were."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if isinstance(index, faiss.IndexFlat):
        stored = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
        stored[positions] = vectors
        return
    size = index.code_size
    codes = faiss.rev_swig_ptr(index.codes.data(), index.ntotal * size).reshape(index.ntotal, size)
    codes[positions] = index.sa_encode(vectors)

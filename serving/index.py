"""Two-stage retrieval with Matryoshka item embeddings (fMRLRec; issue 28 item 5).

A model trained with ``--matryoshka-dims`` (``encoder.matryoshka_dims`` in its model.json) has
item and query prefixes that are each usable on their own. Serving can then index only the first
``serve.prefix_dims`` dims of each item vector (a smaller index, cheaper distances) and rescore
the ``serve.rescore`` best candidates of that index at the full width, so the scores returned are
the full-width cosine similarities, as with a one-stage index.

Under cosine scoring each prefix is L2-normalised on its own, in the index and in the query: the
prefix of a unit vector is not a unit vector, and its norm differs from item to item, so an inner
product of raw prefixes would rank items partly by how much of their norm sits in the first dims.
Training's Matryoshka loss scores normalised prefixes (``training.common.loss``, as fMRLRec does),
so the prefix cosine is what the model learnt to rank by. Under dot scoring the loss scores the raw
prefixes' dot product, and so does the index.
"""

from __future__ import annotations

import numpy as np

from training.common.config import Scoring

AUTO_MIN_PREFIX = 16  # the automatic prefix: the model's smallest trained width at least this wide


def prefix_rows(vectors: np.ndarray, prefix_dims: int, scoring: Scoring = "cosine") -> np.ndarray:
    """What an index of ``prefix_dims`` holds for scored ``vectors`` (rows): the rows themselves
    when 0, else each row's first ``prefix_dims`` dims, L2-normalised under cosine ``scoring`` (a
    zero row stays zero)."""
    if not prefix_dims:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    prefix = np.asarray(vectors[..., :prefix_dims], dtype=np.float32)
    if scoring == "dot":
        return np.ascontiguousarray(prefix)
    norms = np.linalg.norm(prefix, axis=-1, keepdims=True)
    return np.ascontiguousarray(prefix / np.maximum(norms, 1e-12), dtype=np.float32)


def served_prefix(setting: int | None, trained: tuple[int, ...], dim: int, exact_index: bool = True) -> int:
    """The prefix width to index a model of width ``dim`` trained with Matryoshka widths ``trained``.

    ``setting`` None: with an exact index, the smallest trained width of at least ``AUTO_MIN_PREFIX``
    dims, else 0 (off); with HNSW, 0: FAISS's HNSW visits max(efSearch, rescore) nodes, so a prefix
    graph plus the rescore was slower than the full-width graph at no better recall
    (benchmarks/results/matryoshka_retrieval.json).
    0: off. A width: used when the model was trained with it; else ``ValueError`` naming the
    allowed values (a prefix no loss trained ranks poorly, and a prefix not below ``dim`` is no prefix)."""
    if setting is None:
        return min((width for width in trained if width >= AUTO_MIN_PREFIX and exact_index), default=0)
    if setting == 0:
        return 0
    if setting >= dim:
        allowed = _allowed(trained)
        raise ValueError(f"serve.prefix_dims {setting} is not below the model's dim {dim}; allowed: {allowed}")
    if not trained:
        raise ValueError(
            f"serve.prefix_dims {setting} needs a model trained with --matryoshka-dims, and this one was not; "
            "allowed: 0 (off)"
        )
    if setting not in trained:
        allowed = _allowed(trained)
        raise ValueError(f"serve.prefix_dims {setting} is not a width the model was trained on; allowed: {allowed}")
    return setting


def _allowed(trained: tuple[int, ...]) -> str:
    return ", ".join([*map(str, trained), "0 (off)"])


def rescored(candidates: np.ndarray, queries: np.ndarray, item_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores, items) per query, best first: the ``candidates`` (B, C) item indices of the prefix
    stage (-1: none) scored at the full width, the inner product of the scored ``queries`` (B, D)
    and ``item_vectors`` rows (row = item index). A missing candidate keeps -1 and scores -inf."""
    missing = candidates < 0
    rows = item_vectors[np.where(missing, 0, candidates)]  # (B, C, D)
    scores = np.matmul(rows, queries[:, :, None])[..., 0]
    scores[missing] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(candidates, order, 1)

"""The answer to a batch of retrieval requests, from one catalog: exclusions, search, cold start.

Plain functions, imported by the Ray Serve app (so replicas import them by reference).
"""

from __future__ import annotations

import numpy as np

from ingestion.schema import NEGATIVE_ACTIONS
from serving.catalog import Catalog, KnownEvents
from serving.history.store import HistoryRevision
from serving.user_state import LRURecStates

Events = list[tuple[str, str, int]]  # (item id, action, ts), oldest first
Stored = tuple[str, HistoryRevision]  # a stored history's user and revision; None: the request's own
Request = tuple[Events, int, bool, Stored | None]  # events, k, exclude_seen, where a stored history stands
Answer = tuple[Catalog, list[tuple[int, float]], int, int, bool]  # catalog, items, unknown, excluded, cold


def answer_batch(catalog: Catalog, requests: list[Request], states: LRURecStates | None = None) -> list[Answer]:
    """(catalog, [(item index, score)], unknown items, excluded items, cold start) per request;
    stored users' queries from ``states`` where it follows the catalog's model (LRURec)."""
    histories, excludes, unknowns = [], [], []
    for events, _, exclude_seen, _ in requests:
        known = catalog.known(events)
        histories.append(known)
        unknowns.append(len(events) - len(known))
        negative = {item for item, action, _ in known if action in NEGATIVE_ACTIONS}
        excludes.append(negative | {item for item, _, _ in known} if exclude_seen else negative)
    warm = [row for row, history in enumerate(histories) if history]
    found: dict[int, list[tuple[int, float]]] = {}
    if warm:
        queries = _queries(catalog, [requests[row] for row in warm], [histories[row] for row in warm], states)
        ks = max(requests[row][1] for row in warm)
        results = catalog.search(queries, ks, [excludes[row] for row in warm])
        for row, result in zip(warm, results, strict=True):
            found[row] = result[: requests[row][1]]
    answers = []
    for row, (_, k, _, _) in enumerate(requests):
        cold = row not in found
        items = catalog.popular_items(k, excludes[row]) if cold else found[row]
        answers.append((catalog, items, unknowns[row], len(excludes[row]), cold))
    return answers


def _queries(
    catalog: Catalog, requests: list[Request], histories: list[KnownEvents], states: LRURecStates | None
) -> np.ndarray:
    """(B, D) queries: stored users' from their live states when ``states`` follows the catalog's
    model, the others (and every query of other models) from a re-encode of the history."""
    if states is not None and not states.follows(catalog):
        states.release()  # another kind of model serves now: its memory is not held for nothing
        states = None
    stored, users = [], []
    for row, (events, _, _, at) in enumerate(requests):
        if at is not None:
            stored.append(row)
            users.append((at[0], at[1], events))
    if states is None or not stored:
        return catalog.encode(histories)
    queries = np.empty((len(requests), catalog.retriever.item_rows.shape[1]), dtype=np.float32)
    queries[stored] = states.queries(catalog, users)
    given = [row for row, request in enumerate(requests) if request[3] is None]
    if given:
        queries[given] = catalog.encode([histories[row] for row in given])
    return queries

"""The answer to a batch of retrieval requests, from one catalog: exclusions, search, cold start.

Plain functions, imported by the Ray Serve app (so replicas import them by reference).
"""

from __future__ import annotations

from ingestion.schema import NEGATIVE_ACTIONS
from serving.catalog import Catalog

Events = list[tuple[str, str, int]]  # (item id, action, ts), oldest first
Answer = tuple[Catalog, list[tuple[int, float]], int, int, bool]  # catalog, items, unknown, excluded, cold


def answer_batch(catalog: Catalog, requests: list[tuple[Events, int, bool]]) -> list[Answer]:
    """(catalog, [(item index, score)], unknown items, excluded items, cold start) per request."""
    histories, excludes, unknowns = [], [], []
    for events, _, exclude_seen in requests:
        known = [(catalog.index_of[item], action, ts) for item, action, ts in events if item in catalog.index_of]
        histories.append(known)
        unknowns.append(len(events) - len(known))
        negative = {item for item, action, _ in known if action in NEGATIVE_ACTIONS}
        excludes.append(negative | {item for item, _, _ in known} if exclude_seen else negative)
    warm = [row for row, history in enumerate(histories) if history]
    found: dict[int, list[tuple[int, float]]] = {}
    if warm:
        queries = catalog.encode([histories[row] for row in warm])
        ks = max(requests[row][1] for row in warm)
        results = catalog.search(queries, ks, [excludes[row] for row in warm])
        for row, result in zip(warm, results, strict=True):
            found[row] = result[: requests[row][1]]
    answers = []
    for row, (_, k, _) in enumerate(requests):
        cold = row not in found
        items = catalog.popular_items(k, excludes[row]) if cold else found[row]
        answers.append((catalog, items, unknowns[row], len(excludes[row]), cold))
    return answers

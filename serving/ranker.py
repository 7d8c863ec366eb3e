"""A servable ranking version and the ranking of candidates: per-task probabilities and the blend.

``load_ranker`` runs beside the request path (a replica's second model watcher): it downloads
a registered version of ``settings.mlflow.registered_ranking_model``, builds the plain ranker
(``training.ranking.io.RankingScorer``: no TorchRec) and reads ``features/item_vocab`` at the
version the ranker was trained on, so item ids map to the ranker's own indices. Candidates
the ranker does not know (items newer than it) are reported, never scored with an untrained row.

``rank_batch`` scores each request's candidates in one pass that encodes the history once;
``blend`` turns the per-task probabilities into the one score /recommend orders by.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from features.tables import ITEM_VOCAB_TABLE
from infra.settings import Settings
from serving.answer import Events
from serving.catalog import CatalogError, load_registered, read_item_ids
from training.common import tracking
from training.ranking.io import RankingScorer

RankQuery = tuple[Events, list[str], int]  # history (item id, action, ts), candidate ids, exposure ts (ms)


@dataclass(frozen=True)
class Ranked:
    """The answer to one RankQuery: the candidates the ranker knows, in the query's order
    (duplicates dropped), their (candidates, tasks) probabilities, and the unknown ones."""

    ranker: ServedRanker
    item_ids: list[str]
    probabilities: np.ndarray
    unknown_candidates: list[str]
    history_events: int  # events of the history the ranker read (known items)


@dataclass
class ServedRanker:
    """Everything one ranking version needs to score requests; immutable once built."""

    version: str
    run_id: str
    scorer: RankingScorer
    index_of: dict[str, int]  # item id -> the ranker's item index (1..num_items)
    feature_versions: dict[str, int]

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.scorer.tasks


def load_ranker(settings: Settings, version: str) -> ServedRanker:
    """Download registered version ``version`` of the ranking model and make it servable."""
    name = settings.mlflow.registered_ranking_model
    scorer = load_registered(settings, name, version, RankingScorer.from_directory)
    info = scorer.info
    if info is None:
        raise CatalogError(f"version {version} of {name} has no ranking metadata")
    run_id = tracking.client(settings).get_model_version(name, version).run_id or ""
    item_ids = read_item_ids(settings, info.feature_versions.get(ITEM_VOCAB_TABLE), scorer.num_items)
    return ServedRanker(
        version=str(version),
        run_id=run_id,
        scorer=scorer,
        index_of={item: position for position, item in enumerate(item_ids.tolist()) if position},
        feature_versions=dict(info.feature_versions),
    )


def rank_batch(ranker: ServedRanker, queries: Sequence[RankQuery]) -> list[Ranked]:
    """Per query the probabilities of its known candidates; one history encoding per query."""
    answers = []
    for events, candidates, ts in queries:
        history = [(ranker.index_of[item], action, at) for item, action, at in events if item in ranker.index_of]
        known: list[str] = []
        unknown: list[str] = []
        for item in dict.fromkeys(candidates):  # first occurrence of each, in order
            (known if item in ranker.index_of else unknown).append(item)
        if known:
            probabilities = ranker.scorer.score(history, [ranker.index_of[item] for item in known], ts)
        else:
            probabilities = np.zeros((0, len(ranker.tasks)), dtype=np.float32)
        answers.append(Ranked(ranker, known, probabilities, unknown, len(history)))
    return answers


def keep_unranked(ranked: Sequence[str], retrieved: Sequence[str], unranked: set[str], k: int) -> list[str]:
    """The first ``k`` of the ranker's order ``ranked`` with each ``unranked`` candidate (one the
    served ranker does not know: an item a model delta added since the ranker's version) put back
    at its place in the retrieval order ``retrieved``, so a ranked answer does not hide new items
    until the next ranker version."""
    placed = {position: item for position, item in enumerate(retrieved[:k]) if item in unranked}
    order = iter(ranked)
    answer = []
    for position in range(k):
        item = placed.get(position) or next(order, None)
        if item is None:
            break
        answer.append(item)
    return answer


def blend(probabilities: np.ndarray, tasks: Sequence[str], weights: Mapping[str, float]) -> np.ndarray:
    """(candidates,) blended scores: the weighted sum of the task probabilities (a negative
    weight subtracts a negative task such as skip or dislike; tasks without a weight count 0)."""
    vector = np.asarray([weights.get(task, 0.0) for task in tasks], dtype=np.float32)
    return np.asarray(probabilities, dtype=np.float32) @ vector

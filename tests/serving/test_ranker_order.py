"""A ranked answer keeps the candidates the served ranker does not know (items a model delta
added since the ranker's version) at their retrieval places, instead of hiding them."""

from __future__ import annotations

import numpy as np

from serving.api import ScoredItem
from serving.ranker import keep_unranked


def test_unranked_candidates_keep_their_retrieval_places_and_the_ranker_orders_the_rest() -> None:
    retrieved = ["a", "new1", "b", "c", "new2", "d"]
    ranked = ["c", "a", "d", "b"]  # the ranker's order of the candidates it knows
    assert keep_unranked(ranked, retrieved, {"new1", "new2"}, k=6) == ["c", "new1", "a", "d", "new2", "b"]
    assert keep_unranked(ranked, retrieved, {"new1", "new2"}, k=3) == ["c", "new1", "a"]
    assert keep_unranked(ranked, retrieved, set(), k=3) == ["c", "a", "d"]  # as before: the ranker's top k
    assert keep_unranked(["a"], ["a", "new1"], {"new1"}, k=5) == ["a", "new1"]  # fewer than k candidates
    assert keep_unranked([], ["new1", "new2", "x"], {"new1", "new2"}, k=2) == ["new1", "new2"]


def test_the_recommender_scores_an_unranked_candidate_by_retrieval_without_task_probabilities() -> None:
    from serving.app import Recommender
    from serving.ranker import Ranked

    deployment = Recommender.func_or_class  # the plain class under @serve.deployment
    items = [ScoredItem(item_id=item, score=score, scores={"click": score}) for item, score in (("c", 0.9), ("a", 0.5))]
    ranked = Ranked(None, ["a", "c"], np.zeros((2, 1)), ["new1"], 3)  # type: ignore[arg-type]
    found = [(1, 0.8), (7, 0.7), (3, 0.6)]
    answer = deployment._with_unranked(items, ["a", "new1", "c"], found, ranked, k=3)
    assert [(item.item_id, item.score, item.scores) for item in answer] == [
        ("c", 0.9, {"click": 0.9}),
        ("new1", 0.7, None),
        ("a", 0.5, {"click": 0.5}),
    ]

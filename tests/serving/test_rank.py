"""Ranking in the serving application: /rank's contract, /recommend = retrieve -> rank -> blend,
the ranker taken in (and swapped) by promotion with no failed request, bad bodies."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import pytest
import requests
from servingdata import Served, post, wait_for

from serving.ranker import blend
from serving.registry import promote, served_version
from training.common import tracking
from training.ranking.io import RankingScorer


def _ranking_version(served: Served) -> str | None:
    ranking = requests.get(f"{served.url}/healthz", timeout=10).json()["ranking"]
    return None if ranking is None else str(ranking["version"])


@pytest.fixture(scope="module")
def ranked(served: Served) -> Served:
    """The served app once the session's ranker is promoted (and loaded by the replica)."""
    settings = served.settings
    if served_version(settings, settings.mlflow.registered_ranking_model) is None:
        # Before: no ranker -> /rank answers 503 and /recommend is retrieval alone.
        response = post(served, "/rank", {"user_id": served.users[0], "candidates": ["x"]})
        assert response.status_code == 503 and settings.mlflow.registered_ranking_model in response.json()["detail"]
        alone = post(served, "/recommend", {"user_id": served.users[0]}).json()
        assert set(alone["lineage"]["model_version"]) == {settings.mlflow.registered_model}
        assert all(item["scores"] is None for item in alone["items"])
    version = served.ranking_run.model_version
    promote(settings, version, model=settings.mlflow.registered_ranking_model)
    wait_for(lambda: _ranking_version(served) == version)
    return served


def test_rank_scores_every_known_candidate_with_the_registered_model(ranked: Served, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = ranked.settings
    name = settings.mlflow.registered_ranking_model
    retrieved = [
        item["item_id"] for item in post(ranked, "/retrieve", {"user_id": ranked.users[0], "k": 30}).json()["items"]
    ]
    candidates = [*retrieved, retrieved[0], "no-such-item"]
    body = post(ranked, "/rank", {"user_id": ranked.users[0], "candidates": candidates}).json()
    assert [item["item_id"] for item in body["items"]] != [] and body["unknown_candidates"] == ["no-such-item"]
    assert sorted(item["item_id"] for item in body["items"]) == sorted(retrieved)  # each known one, once
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    health = requests.get(f"{ranked.url}/healthz", timeout=10).json()
    tasks = health["ranking"]["tasks"]
    for item in body["items"]:
        assert list(item["scores"]) == tasks and all(0.0 < p < 1.0 for p in item["scores"].values())
        expected = blend(np.asarray([list(item["scores"].values())]), tasks, settings.serve.blend_weights)[0]
        assert item["score"] == pytest.approx(float(expected), abs=1e-5)
    lineage = body["lineage"]
    assert lineage["model_version"] == {name: ranked.ranking_run.model_version}
    assert lineage["model_run_id"] == {name: ranked.ranking_run.run_id}
    assert lineage["history"]["source"] == "online" and lineage["history"]["events"] > 0

    # A given history: the same probabilities as the registered model scored offline.
    history = retrieved[:5]
    given = post(ranked, "/rank", {"history": history, "candidates": retrieved[5:25]}).json()
    with tracking.downloaded_version(settings, ranked.ranking_run.model_version, model=name) as directory:
        scorer = RankingScorer.from_directory(directory)
    index_of = _vocabulary(ranked)
    now = int(time.time() * 1000)
    offline = scorer.score(
        [(index_of[item], "click", now) for item in history], [index_of[item] for item in retrieved[5:25]], now
    )
    online = {item["item_id"]: [item["scores"][task] for task in tasks] for item in given["items"]}
    for row, item in enumerate(retrieved[5:25]):
        np.testing.assert_allclose(online[item], offline[row], atol=1e-4)


def _vocabulary(served: Served) -> dict[str, int]:
    from deltalake import DeltaTable

    from features.tables import ITEM_VOCAB_TABLE

    vocab = DeltaTable(served.settings.table_uri(ITEM_VOCAB_TABLE)).to_pyarrow_table(columns=["item_id", "item_index"])
    return dict(zip(vocab["item_id"].to_pylist(), vocab["item_index"].to_pylist(), strict=True))


def test_recommend_retrieves_then_ranks_with_both_models(ranked: Served) -> None:
    settings = ranked.settings
    user = ranked.users[3]
    body = post(ranked, "/recommend", {"user_id": user, "k": 15}).json()
    assert len(body["items"]) == 15 and not body["cold_start"]
    assert body["lineage"]["model_version"] == {
        settings.mlflow.registered_model: ranked.run.model_version,
        settings.mlflow.registered_ranking_model: ranked.ranking_run.model_version,
    }
    assert body["lineage"]["ranking_feature_versions"]
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True) and all(item["scores"] for item in body["items"])
    # The ranker re-orders what retrieval found: the same items /rank orders the same way.
    pool = [item["item_id"] for item in post(ranked, "/retrieve", {"user_id": user, "k": settings.serve.rank_candidates,
                                                                    "exclude_seen": True}).json()["items"]]  # fmt: skip
    reranked = post(ranked, "/rank", {"user_id": user, "candidates": pool}).json()["items"]
    assert [item["item_id"] for item in body["items"]] == [item["item_id"] for item in reranked[:15]]
    # Seen items stay out, as with retrieval alone; a cold start is the popularity list, unranked.
    cold = post(ranked, "/recommend", {"user_id": "nobody-at-all", "k": 5}).json()
    assert cold["cold_start"] and set(cold["lineage"]["model_version"]) == {settings.mlflow.registered_model}


def test_a_new_ranker_version_swaps_in_without_a_failed_request(ranked: Served) -> None:
    settings = ranked.settings
    name = settings.mlflow.registered_ranking_model
    client = tracking.client(settings)
    source = client.get_model_version(name, ranked.ranking_run.model_version).source
    second = str(client.create_model_version(name, source, run_id=ranked.ranking_run.run_id).version)
    outcomes: Counter[str] = Counter()
    seen: list[str] = []
    stop = threading.Event()

    def load() -> None:
        session = requests.Session()
        while not stop.is_set():
            response = session.post(f"{ranked.url}/recommend", json={"user_id": ranked.users[4]}, timeout=30)
            outcomes[str(response.status_code)] += 1
            if response.status_code == 200:
                seen.append(response.json()["lineage"]["model_version"][name])

    thread = threading.Thread(target=load)
    thread.start()
    try:
        wait_for(lambda: len(seen) > 5)
        promote(settings, second, model=name)
        wait_for(lambda: seen.count(second) > 5)
    finally:
        stop.set()
        thread.join()
    assert set(outcomes) == {"200"}, outcomes
    assert seen[0] == ranked.ranking_run.model_version and seen[-1] == second


BAD_RANK_BODIES = [
    {},
    {"user_id": "u"},
    {"user_id": "u", "candidates": []},
    {"user_id": "u", "candidates": "abc"},
    {"user_id": "u", "candidates": [1, 2]},
    {"user_id": "u", "history": ["a"], "candidates": ["a"]},
    {"history": ["a"], "candidates": ["b"], "k": 3},
    {"user_id": "u", "candidates": ["x"] * 1_001},
    {"history": ["x"] * 1_001, "candidates": ["a"]},
]


def test_bad_rank_bodies_get_4xx(ranked: Served) -> None:
    for body in BAD_RANK_BODIES:
        response = post(ranked, "/rank", body)
        assert 400 <= response.status_code < 500, (body, response.status_code, response.text)
        assert response.json()["detail"]

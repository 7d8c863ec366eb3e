"""LRURec's live user states (serving/user_state.py), without services: a tiny LRURec Retriever in a
serving Catalog, histories fed as the online history holds them (events plus a HistoryRevision)."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from ingestion.schema import ACTION_IDS, ACTIONS
from serving.answer import Request, answer_batch
from serving.catalog import Catalog, build_index
from serving.deltas import apply_delta
from serving.history.snapshot import HistoryEvent, UserState
from serving.history.store import HistoryRevision, _insert
from serving.user_state import LRURecStates, encode_states, state_bytes
from training.common.config import EncoderConfig, Scoring
from training.common.lrurec import LRURec
from training.retrieval.model import RetrievalModel
from training.retrieval.retriever import Retriever
from training.streaming.deltas import DeltaPosition, ModelDelta

ITEMS = 60
DIM = 16
BLOCKS = 2
MAX_LEN = 200
STORE = "store-a"
ATOL = 1e-4

Events = list[tuple[str, str, int]]


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread, as a replica runs (serving.app); many small ops on a shared machine
    otherwise spend most of their time handing work between threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _catalog(seed: int = 0, version: int = 3, kind: str = "lrurec", scoring: Scoring = "cosine") -> Catalog:
    """A servable LRURec (or ``kind``) catalogue of ITEMS items, random weights of ``seed``; item
    ``item-0`` is unknown to it (a newer item)."""
    torch.manual_seed(seed)
    config = EncoderConfig(
        kind=kind, dim=DIM, num_blocks=BLOCKS, max_len=MAX_LEN, dropout=0.2, ffn_dim=DIM, scoring=scoring
    )
    model = RetrievalModel(config, ITEMS).eval()
    retriever = Retriever(model.encoder, model.item_embedding.weight)
    item_ids = np.array(["", *(f"item-{n}" for n in range(1, ITEMS + 1))], dtype=object)
    index, index_kind = build_index(retriever.item_vectors[1:].numpy(), 1_000, 8, 64)
    index_of = {item: n for n, item in enumerate(item_ids.tolist()) if n}
    return Catalog(str(version), "run", retriever, item_ids, index_of, index, index_kind, {})


def _events(count: int, rng: random.Random, start_ts: int = 0, unknown_every: int = 0) -> Events:
    """``count`` events one second apart, random known items and actions; every ``unknown_every``-th
    event names an item the catalogue does not know."""
    return [
        ("item-0" if unknown_every and n % unknown_every == 0 else f"item-{rng.randint(1, ITEMS)}",
         rng.choice(ACTIONS), start_ts + 1_000 * n)
        for n in range(count)
    ]  # fmt: skip


def _reencoded(catalog: Catalog, events: Events) -> np.ndarray:
    """The query a full re-encode gives: what every other model serves."""
    return catalog.encode([catalog.known(events)])[0]


def _revision(appended: int, reordered: int = 0, store: str = STORE) -> HistoryRevision:
    return HistoryRevision(store, appended, reordered)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_state_stepped_through_a_history_answers_as_a_full_reencode(seed: int) -> None:
    """Users of lengths 1..MAX_LEN in one batch (padding in the build), unknown items among the
    events, the events arriving 1, 2 or 13 at a time between requests: every answer from a stepped
    state equals the re-encode of the same history, up to MAX_LEN events."""
    catalog = _catalog(seed)
    rng = random.Random(seed)
    lengths = {"u-short": 9, "u-mid": 50, "u-long": MAX_LEN, "u-unknowns": 120}
    full = {user: _events(n, rng, unknown_every=5 if user == "u-unknowns" else 0) for user, n in lengths.items()}
    seen = dict.fromkeys(full, 1)  # the first request sees each user's first event
    states = LRURecStates(max_users=100)
    while True:
        users = [user for user in full if seen[user] <= lengths[user] and catalog.known(full[user][: seen[user]])]
        if not users:
            break
        asked = [(user, _revision(seen[user]), full[user][: seen[user]]) for user in users]
        queries = states.queries(catalog, asked)
        for row, (_, _, events) in enumerate(asked):
            assert np.allclose(queries[row], _reencoded(catalog, events), atol=ATOL), (row, len(events))
        for user in full:
            seen[user] += rng.choice([1, 2, 13])
    assert states.counts["built"] == len(full)
    assert states.counts["stepped"] > 30 and states.counts["events_stepped"] > 200


@pytest.mark.parametrize("seed", [0, 1])
def test_the_states_built_from_a_reencode_are_those_stepping_reaches(seed: int) -> None:
    """encode_states (the parallel scan, right-padded rows) keeps each block's state at each row's last
    event: the state ``LRURec.step`` reaches from the empty state, and its query is Retriever.queries'."""
    catalog = _catalog(seed)
    retriever = catalog.retriever
    encoder = retriever.encoder
    assert isinstance(encoder, LRURec)
    rng = random.Random(seed)
    histories = [catalog.known(_events(n, rng)) for n in (1, 13, 64, MAX_LEN)]
    queries, layers = encode_states(retriever, histories)
    for row, history in enumerate(histories):
        state = encoder.initial_state(1)
        with torch.inference_mode():
            for item, action, _ in history:
                out, state = encoder.step(state, retriever.item_rows[[item]], torch.tensor([ACTION_IDS[action]]))
        assert torch.allclose(layers[row], torch.cat(state), atol=ATOL)
        assert torch.allclose(queries[row], torch.nn.functional.normalize(out[0], dim=-1), atol=ATOL)
        assert np.allclose(queries[row].numpy(), catalog.encode([history])[0], atol=ATOL)


def test_a_dot_scoring_models_states_answer_with_its_unnormalised_queries() -> None:
    """The held and stepped queries are the model's scored vectors: raw hidden states under dot
    scoring, as a re-encode (and evaluation) gives them."""
    catalog = _catalog(scoring="dot")
    events = _events(40, random.Random(3))
    states = LRURecStates(max_users=10)
    built = states.queries(catalog, [("u", _revision(20), events[:20])])
    stepped = states.queries(catalog, [("u", _revision(40), events)])
    assert np.allclose(built[0], _reencoded(catalog, events[:20]), atol=ATOL)
    assert np.allclose(stepped[0], _reencoded(catalog, events), atol=ATOL)
    assert states.counts["stepped"] == 1
    assert not np.isclose(np.linalg.norm(stepped[0]), 1.0, atol=1e-3)


def test_a_user_with_nothing_new_is_answered_from_the_held_query_and_unknown_items_step_nothing() -> None:
    catalog = _catalog()
    events = _events(30, random.Random(0))
    states = LRURecStates(max_users=10)
    first = states.queries(catalog, [("u", _revision(30), events)])
    again = states.queries(catalog, [("u", _revision(30), events)])
    newer = [*events, ("item-0", "click", 99_000)]  # an item the catalogue does not know
    unknown = states.queries(catalog, [("u", _revision(31), newer)])
    assert np.array_equal(first, again) and np.array_equal(first, unknown)
    assert states.counts == {**states.counts, "built": 1, "stepped": 0, "reused": 2}


@pytest.mark.parametrize(
    "revision",
    [_revision(31, reordered=1), _revision(31, store="store-b"), _revision(30 + 32)],
    ids=["reordered", "another-store", "more-than-held"],
)
def test_a_history_the_state_cannot_follow_is_built_again_from_a_reencode(revision: HistoryRevision) -> None:
    """An event inserted before the end, a restarted history (its counts start again) or more new
    events than the window holds: the state is built again from the held events, not stepped."""
    catalog = _catalog()
    rng = random.Random(1)
    events = _events(30, rng)
    states = LRURecStates(max_users=10)
    states.queries(catalog, [("u", _revision(30), events)])
    rewritten = sorted([*events[:-1], ("item-7", "like", 500), events[-1]], key=lambda event: event[2])
    query = states.queries(catalog, [("u", revision, rewritten)])
    assert np.allclose(query[0], _reencoded(catalog, rewritten), atol=ATOL)
    assert (states.counts["built"], states.counts["stepped"]) == (2, 0)


def test_the_store_counts_appended_and_reordered_events() -> None:
    """UserState.appended counts events put at the end, reordered those put before it; an event
    older than a full window changes nothing and counts nowhere."""
    state = UserState(deque(maxlen=3), 0)
    for ts in (10, 20, 20, 30):  # the fourth pushes the first out: still appended
        _insert(state, HistoryEvent("i", "click", ts))
    assert (state.appended, state.reordered) == (4, 0)
    _insert(state, HistoryEvent("j", "click", 25))  # before the end
    _insert(state, HistoryEvent("k", "click", 5))  # older than the full window: dropped
    assert (state.appended, state.reordered) == (4, 1)
    assert [event.ts for event in state.events] == [20, 25, 30]


def test_a_new_version_or_a_model_delta_drops_every_state() -> None:
    """States computed with the old weights are never stepped with new ones: a new catalogue
    (another version, or a delta's copy with changed item rows) answers as its own re-encode."""
    base = _catalog(seed=0)
    rng = random.Random(2)
    events = {user: _events(40, rng) for user in ("a", "b")}
    states = LRURecStates(max_users=10)
    states.queries(base, [(user, _revision(40), history) for user, history in events.items()])
    assert len(states) == 2

    delta = ModelDelta.build(
        DeltaPosition("streamrec-retrieval", 3), item_indices=np.arange(1, ITEMS + 1),
        item_vectors=np.random.default_rng(0).normal(size=(ITEMS, DIM)), silver_version=1, kafka_offsets={0: 1},
    )  # fmt: skip
    moved = apply_delta(
        Catalog(**{**base.__dict__, "delta": DeltaPosition("streamrec-retrieval", 3)}), delta, _index_params()
    )
    newer = [*events["a"], ("item-5", "click", 10**9)]
    query = states.queries(moved, [("a", _revision(41), newer)])
    assert np.allclose(query[0], _reencoded(moved, newer), atol=ATOL)
    assert not np.allclose(query[0], _reencoded(base, newer), atol=1e-2)  # the old rows would answer otherwise
    assert len(states) == 1 and states.counts["invalidations"] == 1 and states.counts["stepped"] == 0
    assert states.status()["model"] == "v3 #1"

    other = _catalog(seed=1, version=4)
    query = states.queries(other, [("a", _revision(41), newer)])
    assert np.allclose(query[0], _reencoded(other, newer), atol=ATOL)
    assert states.counts["invalidations"] == 2 and states.status()["model"] == "v4"


def _index_params():  # type: ignore[no-untyped-def]
    from serving.deltas import IndexParams

    return IndexParams(exact_max_items=1_000, hnsw_m=8, ef_search=64, rebuild_fraction=0.5)


def test_at_most_max_users_are_kept_least_recently_asked_for_dropped_first() -> None:
    catalog = _catalog()
    rng = random.Random(3)
    history = {user: _events(5, rng) for user in ("a", "b", "c")}
    states = LRURecStates(max_users=2)
    for user in ("a", "b", "a", "c"):  # a asked for again: b is the least recent when c comes
        states.queries(catalog, [(user, _revision(5), history[user])])
    assert len(states) == 2 and states.counts["evicted"] == 1
    states.queries(catalog, [("a", _revision(5), history["a"])])
    assert states.counts["reused"] == 2  # a twice from its held state
    states.queries(catalog, [("b", _revision(5), history["b"])])  # dropped: built again
    assert states.counts["built"] == 4 and len(states) == 2
    assert states.status()["bytes_per_user"] == state_bytes(DIM, BLOCKS) == BLOCKS * 2 * DIM * 8 + DIM * 4


def test_beyond_max_len_the_state_keeps_the_whole_recurrence() -> None:
    """The documented departure: past max_len events the state still holds the older ones (decayed),
    a windowed re-encode does not; it is the recurrence stepped from the first event on."""
    catalog = _catalog()
    encoder = catalog.retriever.encoder
    assert isinstance(encoder, LRURec)
    events = _events(MAX_LEN + 40, random.Random(4))
    states = LRURecStates(max_users=10)
    states.queries(catalog, [("u", _revision(1), events[:1])])
    query = states.queries(catalog, [("u", _revision(len(events)), events)])[0]
    state = encoder.initial_state(1)
    with torch.inference_mode():
        for item, action, _ in catalog.known(events):
            out, state = encoder.step(state, catalog.retriever.item_rows[[item]], torch.tensor([ACTION_IDS[action]]))
    assert np.allclose(query, torch.nn.functional.normalize(out[0], dim=-1).numpy(), atol=ATOL)
    assert not np.allclose(query, _reencoded(catalog, events), atol=ATOL)


def test_answer_batch_answers_stored_users_from_states_and_given_histories_by_reencoding() -> None:
    """The same lists as without states; a history given in the body never touches them; another kind
    of model never uses them and lets them go."""
    catalog = _catalog()
    rng = random.Random(5)
    stored, given = _events(25, rng), _events(12, rng)
    states = LRURecStates(max_users=10)
    requests: list[Request] = [(stored, 10, True, ("u", _revision(25))), (given, 10, False, None)]
    with_states = answer_batch(catalog, requests, states)
    without = answer_batch(catalog, requests)
    for ours, theirs in zip(with_states, without, strict=True):
        assert [item for item, _ in ours[1]] == [item for item, _ in theirs[1]] and ours[2:] == theirs[2:]
    assert len(states) == 1 and states.counts["built"] == 1

    hstu = _catalog(kind="hstu")
    assert not states.follows(hstu) and not LRURecStates(max_users=0).follows(catalog)
    answer_batch(hstu, requests, states)  # another kind of model serves: the states are let go
    assert states.counts["built"] == 1 and len(states) == 0 and states.status()["model"] is None

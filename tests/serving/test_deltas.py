"""A replica applying model deltas (serving/deltas.py), without services: a catalog built from a
tiny synthetic Retriever, a real models/deltas table in a temp directory."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from deltalake import DeltaTable

from serving.api import DeltaLineage
from serving.catalog import Catalog, build_index
from serving.deltas import DeltaFollower, IndexParams, UnappliableDelta, apply_delta
from serving.index import prefix_rows
from training.common.config import EncoderConfig
from training.retrieval.model import RetrievalModel
from training.retrieval.retriever import Retriever
from training.streaming.deltas import DeltaPosition, ModelDelta, ModelDeltaTable
from training.streaming.dense import encode_dense_weights

MODEL = "streamrec-retrieval"
BASE = 3
ITEMS = 40
DIM = 8
HISTORY = [(2, "click", 1_000), (9, "click", 2_000), (4, "like", 3_000)]


def _catalog(index: str = "exact", version: int = BASE, seed: int = 0, prefix: int = 0, codec: str = "flat") -> Catalog:
    """``prefix``: two-stage, an index of the first ``prefix`` dims (normalised, stored as ``codec``),
    rescoring 10 candidates."""
    torch.manual_seed(seed)
    config = EncoderConfig(kind="sasrec", dim=DIM, num_blocks=1, num_heads=1, max_len=10, dropout=0.0, ffn_dim=DIM)
    model = RetrievalModel(config, ITEMS).eval()
    retriever = Retriever(model.encoder, model.item_embedding.weight)
    item_ids = np.array(["", *(f"item-{n}" for n in range(1, ITEMS + 1))], dtype=object)
    vectors = prefix_rows(retriever.item_vectors[1:].numpy(), prefix)
    built, kind = build_index(vectors, 1_000 if index == "exact" else 0, 8, 64, codec)
    index_of = {item: n for n, item in enumerate(item_ids) if n}
    two_stage = {"prefix_dims": prefix, "rescore": 10 if prefix else 0}
    return Catalog(str(version), "run", retriever, item_ids, index_of, built, kind, {}, **two_stage)


def _params(rebuild_fraction: float = 0.5) -> IndexParams:
    return IndexParams(exact_max_items=1_000, hnsw_m=8, ef_search=64, rebuild_fraction=rebuild_fraction)


class Registry:
    """The alias and the base loads a follower asks for."""

    def __init__(self, index: str = "exact") -> None:
        self.alias: str | None = str(BASE)
        self.index = index
        self.reloads: list[str] = []

    def reload(self, version: str) -> Catalog:
        self.reloads.append(version)
        return _catalog(self.index, int(version))


def _follower(uri: str, registry: Registry | None = None, params: IndexParams | None = None) -> DeltaFollower:
    registry = registry or Registry()
    return DeltaFollower(
        uri, MODEL, params or _params(), poll_s=0.01, resolve=lambda: registry.alias, reload=registry.reload
    )


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return str(tmp_path / "models" / "deltas")


def _publish(
    uri: str, rows: dict[int, np.ndarray], base: int = BASE, new_items: dict[str, int] | None = None, **fields: Any
) -> ModelDelta:
    table = ModelDeltaTable(uri)
    indices = np.array(sorted(rows), dtype=np.int64)
    vectors = np.stack([rows[int(index)] for index in indices]).astype(np.float32)
    delta = ModelDelta.build(
        table.last(MODEL, base), item_indices=indices, item_vectors=vectors, silver_version=7,
        kafka_offsets={0: 11}, new_items=new_items, **fields,
    )  # fmt: skip
    table.publish(delta)
    return delta


def _query(catalog: Catalog) -> np.ndarray:
    return catalog.encode([HISTORY])[0]


def _top(catalog: Catalog, k: int = 5) -> list[int]:
    return [item for item, _ in catalog.search(catalog.encode([HISTORY]), k, [set()])[0]]


# Applying ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", [0, 4])
@pytest.mark.parametrize("index", ["exact", "hnsw"])
def test_deltas_apply_in_order_and_a_changed_row_ranks_first(uri: str, index: str, prefix: int) -> None:
    base = _catalog(index, prefix=prefix)
    query = _query(base)
    before = _top(base)
    chosen = next(item for item in range(ITEMS, 0, -1) if item not in before)  # not in the top 5 yet
    _publish(uri, {chosen: -3 * query, 5: np.ones(DIM)})
    _publish(uri, {chosen: 3 * query})  # the second delta overwrites the first's row
    follower = _follower(uri)
    served = follower.caught_up(base)
    assert served.delta == ModelDeltaTable(uri).last(MODEL, BASE) and served.delta.sequence == 2
    assert _top(served)[0] == chosen
    assert torch.allclose(served.retriever.item_rows[chosen], torch.tensor(3 * query))
    assert torch.allclose(served.retriever.item_rows[5], torch.ones(DIM))
    assert _top(base) == before and base.delta is None  # copy-on-write: the base is untouched
    assert served.popular is base.popular and served.index_of is base.index_of  # shared: nothing new there
    assert [record.sequence for record in follower.applied] == [1, 2] and follower.error is None


@pytest.mark.parametrize("prefix", [0, 4])
def test_new_items_are_searchable_and_known_to_histories(uri: str, prefix: int) -> None:
    base = _catalog(prefix=prefix)
    query = _query(base)
    new = ITEMS + 3  # two vocabulary entries no delta named yet lie between: never returned
    _publish(uri, {new: 2 * query, 6: -query}, new_items={"fresh": new})
    served = _follower(uri).caught_up(base)
    assert served.num_items == new and served.index_of["fresh"] == new and served.item_ids[new] == "fresh"
    assert served.item_ids[ITEMS + 1] == "" and "fresh" not in base.index_of and base.num_items == ITEMS
    everything = [item for item, _ in served.search(query[None, :], new, [set()])[0]]
    assert everything[0] == new and ITEMS + 1 not in everything and ITEMS + 2 not in everything
    assert len(everything) == ITEMS + 1
    with_new = served.encode([[*HISTORY, (new, "click", 4_000)]])
    assert not np.allclose(with_new, served.encode([HISTORY]))  # the new row is read, not padding

    _publish(uri, {ITEMS + 1: query}, new_items={"later": ITEMS + 1})  # a gap row named later
    later = _follower(uri).caught_up(base)
    assert later.index_of["later"] == ITEMS + 1 and ITEMS + 1 in _top(later, 3)


@pytest.mark.parametrize("prefix", [0, 4])
def test_hnsw_readds_changed_items_and_rebuilds_past_the_threshold(uri: str, prefix: int) -> None:
    base = _catalog("hnsw", prefix=prefix)
    query = _query(base)
    far = [item for item in range(ITEMS, 0, -1) if item not in _top(base, 20)][:3]
    _publish(uri, {far[0]: query})
    served = _follower(uri, params=_params(rebuild_fraction=0.5)).caught_up(base)
    assert _top(served)[0] == far[0]  # reached from its new neighbourhood (an in-place overwrite is not)
    assert served.index.ntotal == ITEMS + 1 and served.index_filter is not None
    found = [item for item, _ in served.search(query[None, :], ITEMS, [set()])[0]]
    assert sorted(found) == list(range(1, ITEMS + 1))  # the stale node of far[0] is never returned

    rows = {item: np.random.default_rng(item).standard_normal(DIM) for item in range(1, 12)}
    _publish(uri, rows)  # 11 of 40 items re-added: over 0.25 of them
    rebuilt = _follower(uri, params=_params(rebuild_fraction=0.25)).caught_up(base)
    assert rebuilt.index.ntotal == ITEMS and rebuilt.index_labels is None and rebuilt.index_filter is None
    assert _top(rebuilt) == _top(_follower(uri, params=_params(rebuild_fraction=10)).caught_up(base))


@pytest.mark.parametrize("index", ["exact", "hnsw"])
def test_a_two_stage_index_holds_the_normalised_prefix_of_every_changed_and_new_row(uri: str, index: str) -> None:
    """The prefix index stays what a fresh build of the new rows would hold: changed rows, new
    items and a rebuild write each row's normalised prefix, and rescoring reads the new full rows."""
    import faiss

    base = _catalog(index, prefix=4)
    query = _query(base)
    rng = np.random.default_rng(5)
    _publish(uri, {3: 2 * query, 7: rng.standard_normal(DIM), ITEMS + 1: rng.standard_normal(DIM)},
             new_items={"fresh": ITEMS + 1})  # fmt: skip
    served = _follower(uri, params=_params(rebuild_fraction=0.5)).caught_up(base)
    assert served.prefix_dims == 4 and served.rescore == 10 and served.index.d == 4
    expected = prefix_rows(served.retriever.item_vectors.numpy(), 4)
    storage = served.index if index == "exact" else faiss.downcast_index(served.index.storage)
    stored = faiss.rev_swig_ptr(storage.get_xb(), storage.ntotal * 4).reshape(storage.ntotal, 4)
    labels = np.arange(1, storage.ntotal + 1) if served.index_labels is None else served.index_labels
    live = ~served.index_filter.hidden if served.index_filter is not None else np.ones(len(labels), bool)
    assert np.allclose(stored[live], expected[labels[live]], atol=1e-6)
    assert set(labels[live].tolist()) == set(range(1, ITEMS + 2))  # every item once, the new one too
    top = served.search(query[None, :], 3, [set()])[0]
    assert top[0][0] == 3 and top[0][1] == pytest.approx(1.0, abs=1e-5)  # rescored from the new full row

    rows = {item: rng.standard_normal(DIM) for item in range(10, 25)}
    _publish(uri, rows)  # 15 of 41 items: past the rebuild fraction, HNSW is rebuilt (exact at this size)
    rebuilt = _follower(uri, params=_params(rebuild_fraction=0.25)).caught_up(base)
    assert rebuilt.index.d == 4 and rebuilt.prefix_dims == 4
    stored = faiss.rev_swig_ptr(rebuilt.index.get_xb(), rebuilt.index.ntotal * 4).reshape(-1, 4)  # rebuilt exact
    expected = prefix_rows(rebuilt.retriever.item_vectors.numpy(), 4)
    assert rebuilt.index_labels is None and rebuilt.index.ntotal == ITEMS + 1
    assert np.allclose(stored[: ITEMS + 1], expected[1 : ITEMS + 2], atol=1e-6)


def test_an_fp16_prefix_index_takes_changed_and_new_rows_as_fp16_codes(uri: str) -> None:
    """serve.prefix_codec fp16: a delta overwrites the changed rows' codes and appends the new
    item's, so the codes decode to every row's normalised prefix, as a fresh build's would."""
    import faiss

    base = _catalog(prefix=4, codec="fp16")
    assert isinstance(base.index, faiss.IndexScalarQuantizer) and base.index.code_size == 8  # 4 dims x 2 bytes
    query = _query(base)
    rng = np.random.default_rng(6)
    _publish(uri, {3: 2 * query, 7: rng.standard_normal(DIM), ITEMS + 1: rng.standard_normal(DIM)},
             new_items={"fresh": ITEMS + 1})  # fmt: skip
    served = _follower(uri, params=_params()).caught_up(base)
    assert isinstance(served.index, faiss.IndexScalarQuantizer) and served.index.ntotal == ITEMS + 1
    codes = faiss.vector_to_array(served.index.codes).reshape(served.index.ntotal, -1)
    decoded = served.index.sa_decode(codes)
    expected = prefix_rows(served.retriever.item_vectors.numpy(), 4)[1:]
    assert np.allclose(decoded, expected, atol=1e-3)  # fp16: about 3 decimal digits
    assert not np.allclose(faiss.vector_to_array(base.index.codes), codes[:ITEMS].ravel())  # the base is untouched
    top = served.search(query[None, :], 3, [set()])[0]
    assert top[0][0] == 3 and top[0][1] == pytest.approx(1.0, abs=1e-5)  # rescored from the new full row


def test_hnsw_finds_changed_items_where_an_overwrite_in_place_does_not(uri: str) -> None:
    """5,000 items, 30 of them moved to random places: the re-added nodes are found first for their
    own vector; the same vectors written into the graph's storage in place are mostly not reached."""
    import faiss

    items, dim = 5_000, 16
    torch.manual_seed(0)
    config = EncoderConfig(kind="sasrec", dim=dim, num_blocks=1, num_heads=1, max_len=10, dropout=0.0, ffn_dim=dim)
    retriever = Retriever(RetrievalModel(config, items).eval().encoder, torch.randn(items + 1, dim))
    index, kind = build_index(retriever.item_vectors[1:].numpy(), 0, 8, 16)
    item_ids = np.array(["", *(f"item-{n}" for n in range(1, items + 1))], dtype=object)
    base = Catalog(str(BASE), "run", retriever, item_ids, {}, index, kind, {}, delta=DeltaPosition(MODEL, BASE))
    rng = np.random.default_rng(0)
    moved = rng.choice(np.arange(1, items + 1), 30, replace=False)
    targets = rng.standard_normal((30, dim)).astype(np.float32)
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    _publish(uri, dict(zip(moved.tolist(), targets, strict=True)))
    served = _follower(uri).caught_up(base)
    found = [result[0][0] for result in served.search(targets, 1, [set() for _ in moved])]
    assert sum(int(item == expected) for item, expected in zip(found, moved, strict=True)) >= 28

    in_place = faiss.clone_index(base.index)
    stored = faiss.rev_swig_ptr(faiss.downcast_index(in_place.storage).get_xb(), items * dim).reshape(items, dim)
    stored[moved - 1] = targets
    _, ids = in_place.search(targets, 1)
    assert int((ids[:, 0] + 1 == moved).sum()) <= 15


def test_dense_weights_swap_the_encoder_of_the_new_catalog_only(uri: str) -> None:
    base = _catalog()
    changed = {name: tensor + 0.5 for name, tensor in base.retriever.encoder.state_dict().items()}
    _publish(uri, {1: np.ones(DIM)}, dense_weights=encode_dense_weights(changed))
    served = _follower(uri).caught_up(base)
    reference = _catalog()
    reference.retriever.encoder.load_state_dict(changed)
    assert served.retriever.encoder is not base.retriever.encoder
    assert np.allclose(served.encode([HISTORY]), Retriever(reference.retriever.encoder, served.retriever.item_rows)
                       .queries(_batch()).numpy(), atol=1e-6)  # fmt: skip
    assert np.allclose(base.encode([HISTORY]), _catalog().encode([HISTORY]))  # the served encoder untouched


def _batch() -> dict[str, torch.Tensor]:
    from ingestion.schema import ACTION_IDS

    return {
        "item_indices": torch.tensor([[item for item, _, _ in HISTORY]]),
        "action_ids": torch.tensor([[ACTION_IDS[action] for _, action, _ in HISTORY]]),
        "timestamps": torch.tensor([[ts for _, _, ts in HISTORY]]),
        "lengths": torch.tensor([len(HISTORY)]),
    }


def test_a_reader_never_sees_a_half_applied_delta(uri: str) -> None:
    """Delta s sets every row to the pattern of s; readers taking the served catalog while deltas
    are applied always find rows, index and position of one and the same delta."""
    follower = _follower(uri)
    base = follower.caught_up(_catalog())  # what the watcher holds: the base, loaded through the follower
    rng = np.random.default_rng(1)
    patterns = {0: base.retriever.item_rows[1:].numpy().copy()}
    for sequence in range(1, 16):
        patterns[sequence] = rng.standard_normal((ITEMS, DIM)).astype(np.float32)
        _publish(uri, {item: patterns[sequence][item - 1] for item in range(1, ITEMS + 1)})
    probe = rng.standard_normal((1, DIM)).astype(np.float32)
    problems: list[str] = []
    seen: set[int] = set()
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            catalog = follower.serving(base)
            sequence = catalog.delta.sequence if catalog.delta else 0
            seen.add(sequence)
            rows = catalog.retriever.item_rows[1:].numpy()
            vectors = patterns[sequence] / np.linalg.norm(patterns[sequence], axis=1, keepdims=True)
            (found,) = catalog.search(probe, 3, [set()])
            best = int(np.argmax(vectors @ probe[0])) + 1
            if not np.array_equal(rows, patterns[sequence]) or found[0][0] != best:
                problems.append(f"position #{sequence} with other rows or index")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(15):
            follower.follow_once(base)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert not problems, problems[:3]
    assert 0 in seen and follower.serving(base).delta.sequence == 15


# Refusals ---------------------------------------------------------------------------------------
def _corrupt(uri: str, delta: ModelDelta) -> None:
    (path,) = [
        Path(uri) / action["path"]
        for action in pa.table(DeltaTable(uri).get_add_actions(flatten=True)).to_pylist()
        if action["max.sequence"] == delta.sequence
    ]
    content = bytearray(path.read_bytes())
    content[content.find(delta.item_vectors.tobytes()[:16]) + 5] ^= 0x01
    path.write_bytes(bytes(content))


def _unchecked(uri: str, rows: dict[int, np.ndarray]) -> None:
    """Commit the next delta without ``publish``'s checks, as a faulty writer could (a width
    other than the base's earlier deltas' here)."""
    from deltalake import CommitProperties, Transaction, write_deltalake

    from training.streaming import deltas as contract

    indices = np.array(sorted(rows), dtype=np.int64)
    delta = ModelDelta.build(
        ModelDeltaTable(uri).last(MODEL, BASE), item_indices=indices,
        item_vectors=np.stack([rows[int(index)] for index in indices]), silver_version=7, kafka_offsets={},
    )  # fmt: skip
    transaction = Transaction(contract._app_id(MODEL, BASE), delta.sequence)
    write_deltalake(
        uri, contract._to_arrow(delta), mode="append", partition_by=contract.PARTITION_COLUMNS,
        commit_properties=CommitProperties(app_transactions=[transaction]),
    )  # fmt: skip


REFUSALS = {
    "sequence gap": (
        lambda uri, q: [_publish(uri, {1: q}), DeltaTable(uri).delete("sequence = 1")],
        "SequenceGap", "#1: the log records it, but no row holds it",
    ),
    "wrong width": (lambda uri, q: _unchecked(uri, {1: np.ones(DIM + 2)}), "WidthMismatch", "width 10, expected 8"),
    "corrupt payload": (lambda uri, q: _corrupt(uri, _publish(uri, {1: q})), "ChecksumMismatch", "payload hashes to"),
    "row beyond the catalogue": (lambda uri, q: _publish(uri, {ITEMS + 1: q}), "UnappliableDelta", "name no new item"),
    "a new item the vocabulary has elsewhere": (
        lambda uri, q: _publish(uri, {ITEMS + 1: q}, new_items={"item-4": ITEMS + 1}),
        "UnappliableDelta", "the vocabulary has it at 4",
    ),
    "dense weights of another encoder": (
        lambda uri, q: _publish(uri, {1: q}, dense_weights=encode_dense_weights({"other": torch.ones(2)})),
        "UnappliableDelta", "dense weights do not fit the encoder",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_bad_delta_is_refused_and_the_last_good_state_serves_on(
    uri: str, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    query = _query(_catalog())
    _publish(uri, {2: query})  # a good delta first
    follower = _follower(uri)
    base = good = follower.caught_up(_catalog())
    follower.follow_once(base)
    assert follower.serving(base) is good and good.delta.sequence == 1

    if case == "sequence gap":  # the log records deltas 2 and 3, no row holds 2
        _publish(uri, {3: query})
        _publish(uri, {4: query})
        DeltaTable(uri).delete("sequence = 2")
        problem, message = "SequenceGap", "#2: the log records it, but no row holds it"
    else:
        make, problem, message = REFUSALS[case]
        make(uri, query)
    served = follower.follow_once(base)
    assert served is good and follower.serving(base) is good  # the last good state, the very object
    assert follower.error is not None and message in follower.error and f"still serving {MODEL} v3 #1" in follower.error
    assert any(message in record.getMessage() and record.levelname == "ERROR" for record in caplog.records)
    assert problem in type_names(follower, base, uri)
    logged = len(caplog.records)
    follower.follow_once(base)  # nothing changed: neither read again nor logged again
    assert len(caplog.records) == logged and follower.serving(base) is good

    ModelDeltaTable(uri).drop(MODEL, BASE)  # the bad delta gone: the base reloads, the error clears
    follower.follow_once(base)
    assert follower.error is None and follower.serving(base).delta == DeltaPosition(MODEL, BASE)


def type_names(follower: DeltaFollower, base: Catalog, uri: str) -> str:
    """The class of the refusal the table or the applier raises for the base's next delta."""
    position = follower.serving(base).delta
    assert position is not None
    try:
        for delta in ModelDeltaTable(uri).after(position, width=DIM):
            apply_delta(follower.serving(base), delta, _params())
    except Exception as error:
        return type(error).__name__
    return "nothing refused"


def test_deltas_for_a_base_this_replica_does_not_serve_are_reported_not_applied(uri: str) -> None:
    follower = _follower(uri)
    base = follower.caught_up(_catalog())
    follower.follow_once(base)
    _publish(uri, {1: np.ones(DIM)}, base=BASE + 2)
    served = follower.follow_once(base)
    assert served.delta == DeltaPosition(MODEL, BASE) and served.retriever is base.retriever
    assert follower.error is not None and f"version(s) [{BASE + 2}]" in follower.error
    assert "not applied" in follower.error

    moved = _catalog(version=BASE + 2)  # the alias moves to that version: its deltas apply
    follower.follow_once(follower.caught_up(moved))
    assert follower.error is None


def test_unapplied_delta_checks_its_catalog() -> None:
    base = _catalog()
    base = base.__class__(**{**base.__dict__, "delta": DeltaPosition(MODEL, BASE)})
    other = ModelDelta.build(
        DeltaPosition(MODEL, BASE + 1), item_indices=np.array([1]), item_vectors=np.ones((1, DIM)),
        silver_version=1, kafka_offsets={},
    )  # fmt: skip
    with pytest.raises(UnappliableDelta, match="the catalog is at"):
        apply_delta(base, other, _params())


# Bases, drops, restarts, lineage --------------------------------------------------------------
def test_a_new_base_replaces_the_old_one_and_its_deltas(uri: str) -> None:
    follower = _follower(uri)
    old = follower.caught_up(_catalog())
    _publish(uri, {1: np.ones(DIM)})
    follower.follow_once(old)
    assert follower.serving(old).delta.sequence == 1
    new = follower.caught_up(_catalog(version=BASE + 1, seed=1))  # the watcher loads the next version
    assert new.delta == DeltaPosition(MODEL, BASE + 1)
    assert follower.serving(new) is new  # the old base's advanced catalog is not served for the new base
    _publish(uri, {2: np.ones(DIM)}, base=BASE + 1)
    assert follower.follow_once(new).delta.sequence == 1


def test_dropped_deltas_reload_the_base_while_the_alias_names_it(uri: str) -> None:
    registry = Registry()
    _publish(uri, {1: np.ones(DIM)})
    _publish(uri, {2: np.ones(DIM)})
    follower = _follower(uri, registry)
    base = served = follower.caught_up(_catalog())
    follower.follow_once(base)
    assert follower.serving(base) is served and served.delta.sequence == 2

    ModelDeltaTable(uri).drop(MODEL, BASE)
    registry.alias = "1"  # a rollback: the alias moved first; the watcher will load version 1
    assert follower.follow_once(base) is served and registry.reloads == [] and follower.error is None

    registry.alias = str(BASE)  # deltas dropped under a base that still serves: back to the base
    _publish(uri, {3: 2 * np.ones(DIM)})
    reloaded = follower.follow_once(base)
    assert registry.reloads == [str(BASE)] and reloaded.delta.sequence == 1 and follower.serving(base) is reloaded
    assert torch.allclose(reloaded.retriever.item_rows[3], 2 * torch.ones(DIM))
    assert torch.allclose(reloaded.retriever.item_rows[1], _catalog().retriever.item_rows[1])  # old delta 1: gone

    _publish(uri, {4: np.ones(DIM)})  # drop and republish past the replica's position: BrokenChain, a reload
    ModelDeltaTable(uri).drop(MODEL, BASE)
    for row in (5, 6, 7):
        _publish(uri, {row: np.ones(DIM)})
    follower.follow_once(base)
    assert registry.reloads == [str(BASE)] * 2 and follower.serving(base).delta.sequence == 3


def test_a_restarted_replica_converges_to_the_newest_delta(uri: str) -> None:
    running = _follower(uri)
    base = running.caught_up(_catalog())
    for sequence in range(1, 6):
        rows = {sequence: np.full(DIM, float(sequence)), ITEMS + sequence: np.full(DIM, -float(sequence))}
        _publish(uri, rows, new_items={f"new-{sequence}": ITEMS + sequence})
        running.follow_once(base)
    restarted = _follower(uri).caught_up(_catalog())  # a new replica: the base loaded, then its deltas
    live = running.serving(base)
    assert restarted.delta == live.delta == ModelDeltaTable(uri).last(MODEL, BASE)
    assert torch.equal(restarted.retriever.item_rows, live.retriever.item_rows)
    assert restarted.index_of == live.index_of and _top(restarted) == _top(live)


def test_lineage_names_the_base_and_the_sequence(uri: str) -> None:
    delta = _publish(uri, {1: np.ones(DIM)})
    served = _follower(uri).caught_up(_catalog())
    lineage = DeltaLineage.of(served.delta)
    assert (lineage.base_version, lineage.sequence, lineage.checksum) == (BASE, 1, delta.checksum)
    assert DeltaLineage.of(DeltaPosition(MODEL, BASE)).sequence == 0


def test_the_follower_thread_applies_what_is_published(uri: str) -> None:
    from infra.polling import wait_until

    follower = _follower(uri)
    base = follower.caught_up(_catalog())
    follower.start(lambda: base)
    try:
        delta = _publish(uri, {1: np.ones(DIM)})
        wait_until(lambda: follower.serving(base).delta == delta.position, 10, 0.01, what="the delta applied")
    finally:
        follower.stop()
    assert follower.status()["applied"][0]["sequence"] == 1


def test_streamrec_rollback_drops_the_deltas_of_the_version_rolled_back_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer
    from typer.testing import CliRunner

    import serving.registry
    from infra.settings import get_settings
    from serving.cli import register

    app = typer.Typer()
    register(app)

    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path))
    monkeypatch.setenv("STREAMREC_REGISTERED_MODEL", MODEL)
    uri = get_settings().table_uri("models/deltas")
    _publish(uri, {1: np.ones(DIM)})
    _publish(uri, {1: np.ones(DIM)}, base=BASE - 1)
    moves: list[str] = []
    monkeypatch.setattr(serving.registry, "served_version", lambda settings, name=None: str(BASE))
    monkeypatch.setattr(serving.registry, "rollback", lambda settings, model=None: moves.append("moved") or "2")
    result = CliRunner().invoke(app, ["rollback"])
    assert result.exit_code == 0, result.output
    assert moves == ["moved"] and "dropped 1 model deltas of version 3" in result.output
    table = ModelDeltaTable(uri)
    assert table.last(MODEL, BASE).sequence == 0 and table.last(MODEL, BASE - 1).sequence == 1


def test_serve_status_shows_the_delta_and_why_one_was_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    from typer.testing import CliRunner

    import serving.deploy
    from serving.cli import register

    body = {
        "status": "degraded", "http_status": 200, "last_error": None, "history_shards": [],
        "model": {"version": "3", "index": "exact", "delta": {"base_version": 3, "sequence": 7, "checksum": "ab"}},
        "delta_last_error": "model delta streamrec-retrieval v3 #8: payload hashes to ...; refused",
    }  # fmt: skip
    monkeypatch.setattr(serving.deploy, "health", lambda settings: body)
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["serve", "status"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "version 3 (exact, model delta #7)" in result.output and "#8: payload hashes to" in result.output


def test_a_replicas_metrics_count_the_delta_served_and_its_delay(uri: str) -> None:
    from serving.metrics import ServingMetrics

    metrics = ServingMetrics()
    follower = DeltaFollower(
        uri, MODEL, _params(), poll_s=0.01, resolve=lambda: str(BASE), reload=lambda version: _catalog(),
        on_apply=metrics.delta_applied,
    )  # fmt: skip
    # Buckets far apart, so a loaded machine's slow apply (seconds) cannot move a delay across them.
    _publish(uri, {1: np.ones(DIM)}, published_ms=int(time.time() * 1000) - 45_000)  # published 45 s ago
    _publish(uri, {2: np.ones(DIM)})
    follower.caught_up(_catalog())
    text = metrics.render().decode()
    assert "streamrec_model_delta_sequence 2.0" in text
    assert 'streamrec_model_delta_publish_to_served_seconds_bucket{le="10.0"} 1.0' in text
    assert 'streamrec_model_delta_publish_to_served_seconds_bucket{le="30.0"} 1.0' in text
    assert 'streamrec_model_delta_publish_to_served_seconds_bucket{le="60.0"} 2.0' in text

"""Serving's side of model deltas: from a delta's publish to the replica's catalog holding it.

In process, without HTTP or Ray: a catalog of a synthetic model (random item rows of width 64, a
one-block SASRec encoder) indexed as a replica indexes it, a ``DeltaFollower`` polling a real
models/deltas table every ``--poll-s`` seconds in its thread (as in a replica), and a writer
publishing deltas of ``--rows`` changed rows and ``--new-items`` new items at random phases of the
poll. Per delta: publish -> visible (the follower serves a catalog at that delta's position,
checked every millisecond) and the apply alone (``apply_delta``: copies, index update, swap).
Catalogues: 10k items (exact, FAISS flat) and 100k items (HNSW, the default above 50k).

    .venv/bin/python -m benchmarks.streaming.apply [--deltas 20] [--rows 1000] [--poll-s 1] [--out PATH]

Writes benchmarks/results/model_delta_apply.json (``--out``) and prints its path.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import RESULTS, header, loads, log, write_result
from infra.settings import ServeSettings
from serving.catalog import Catalog, build_index
from serving.deltas import DeltaFollower, IndexParams
from training.common.config import EncoderConfig
from training.retrieval.model import RetrievalModel
from training.retrieval.retriever import Retriever
from training.streaming.deltas import DeltaPosition, ModelDelta, ModelDeltaTable

RESULT = RESULTS / "model_delta_apply.json"
MODEL = "streamrec-retrieval"
BASE = 1
WIDTH = 64
SIZES = {"10k_exact": (10_000, "exact"), "100k_hnsw": (100_000, "hnsw")}


def catalog(items: int, kind: str, seed: int) -> Catalog:
    """A servable catalog of a synthetic model, indexed with the serve settings' defaults."""
    torch.manual_seed(seed)
    config = EncoderConfig(kind="sasrec", dim=WIDTH, num_blocks=1, num_heads=1, max_len=50, dropout=0.0)
    retriever = Retriever(RetrievalModel(config, items).eval().encoder, torch.randn(items + 1, WIDTH))
    serve = ServeSettings()
    exact_max = items if kind == "exact" else 0
    index, built = build_index(retriever.item_vectors[1:].numpy(), exact_max, serve.hnsw_m, serve.hnsw_ef_search)
    item_ids = np.array(["", *(f"item-{n}" for n in range(1, items + 1))], dtype=object)
    index_of = {item: n for n, item in enumerate(item_ids.tolist()) if n}
    position = DeltaPosition(MODEL, BASE)
    return Catalog(str(BASE), "bench", retriever, item_ids, index_of, index, built, {}, delta=position)


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p95 and max in milliseconds."""
    array = np.asarray(values) * 1000
    return {
        "p50_ms": round(float(np.percentile(array, 50)), 1),
        "p95_ms": round(float(np.percentile(array, 95)), 1),
        "max_ms": round(float(array.max()), 1),
    }


def measure(name: str, args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    """Publish ``args.deltas`` deltas to a fresh table and time each until the follower serves it."""
    items, kind = SIZES[name]
    started = time.perf_counter()
    base = catalog(items, kind, args.seed)
    build_s = time.perf_counter() - started
    log(f"{name}: catalog built in {build_s:.1f} s")
    uri = str(directory / name)
    serve = ServeSettings()
    params = IndexParams(items if kind == "exact" else 0, serve.hnsw_m, serve.hnsw_ef_search, args.rebuild_fraction)
    follower = DeltaFollower(
        uri, MODEL, params, poll_s=args.poll_s, resolve=lambda: str(BASE), reload=lambda version: base
    )
    follower.start(lambda: base)
    writer = ModelDeltaTable(uri)
    rng = np.random.default_rng(args.seed)
    phases = random.Random(args.seed)
    visible, publish = [], []
    size = items
    try:
        for _ in range(args.deltas):
            time.sleep(phases.uniform(0, args.poll_s))  # a random phase of the follower's poll
            changed = rng.choice(np.arange(1, size + 1), args.rows - args.new_items, replace=False)
            new = np.arange(size + 1, size + args.new_items + 1)
            indices = np.concatenate([changed, new])
            delta = ModelDelta.build(
                writer.last(MODEL, BASE), item_indices=indices,
                item_vectors=rng.standard_normal((indices.size, WIDTH), dtype=np.float32),
                silver_version=0, kafka_offsets={}, new_items={f"new-{index}": int(index) for index in new},
            )  # fmt: skip
            begun = time.perf_counter()
            writer.publish(delta)
            published = time.perf_counter()
            while follower.serving(base).delta != delta.position:
                if follower.error is not None:
                    raise RuntimeError(follower.error)
                time.sleep(0.001)
            visible.append(time.perf_counter() - published)
            publish.append(published - begun)
            size += args.new_items
    finally:
        follower.stop()
    applies = [record.apply_seconds for record in follower.applied]
    served = follower.serving(base)
    result = {
        "items": items,
        "index": kind,
        "index_after": served.index_kind,
        "catalog_build_s": round(build_s, 1),
        "publish": percentiles(publish),
        "publish_to_visible": percentiles(visible),
        "apply": percentiles(applies),
        "applies_recorded": len(applies),
    }
    log(f"{name}: publish -> visible {result['publish_to_visible']}, apply {result['apply']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas", type=int, default=20)
    parser.add_argument("--rows", type=int, default=1000, help="rows per delta, new items included")
    parser.add_argument("--new-items", type=int, default=10)
    parser.add_argument("--poll-s", type=float, default=ServeSettings().delta_poll_s)
    parser.add_argument("--rebuild-fraction", type=float, default=ServeSettings().delta_rebuild_fraction)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a replica
    load_before = loads()
    with tempfile.TemporaryDirectory(prefix="streamrec-bench-apply-") as directory:
        sizes = {name: measure(name, args, Path(directory)) for name in args.sizes}
    result = {
        **header("model_delta_apply", args, [args.seed]),
        "load_before_after": [load_before, loads()],
        "width": WIDTH,
        "sizes": sizes,
    }
    print(write_result(args.out, result))


if __name__ == "__main__":
    main()

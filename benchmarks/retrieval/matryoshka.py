"""Two-stage retrieval with Matryoshka item embeddings: recall@100 and search time, prefix vs full width.

In process, no services. What runs:

1. Two small SASRec retrievers are trained here on ``../shared/data/wikipedia.txt`` (8,227 users,
   1,000 items; every event a click, one minute apart), with the project's model
   (``RetrievalModel``) and loss (``retrieval_loss``, full softmax), one with the Matryoshka loss
   on ``--dims`` (as ``streamrec train --matryoshka-dims 16,32``) and one without (the control),
   same seed, width, epochs and batches. The lake and Ray are left out: they change neither the
   loss nor the vectors, only the time to get them.
2. Catalogues of ``--sizes`` items are built from each model's 1,000 trained item rows (1,000
   items cannot show a search at 1M): item j = w u_a + (1 - w) u_b + noise, with u_a, u_b two
   normalised trained rows drawn at random, w uniform in [0, 1] and Gaussian noise of norm about
   ``--noise`` on every dim, then normalised. The prefix of such an item is the same mix of the
   trained rows' prefixes, so what the Matryoshka loss taught the prefixes carries over, and the
   noise (as much in the last dims as in the first) is what a prefix cannot see.
3. Queries: the trained encoder's queries (``Retriever.queries``) of the last ``max_len`` events of
   ``--queries`` users drawn per seed.
4. Truth: exact full-width search (FAISS flat, inner product) top 100. Each configuration is a
   serving ``Catalog`` searched through ``Catalog.search`` (what a replica runs): one-stage full
   width (exact flat; HNSW as serving builds it above ``serve.exact_max_items``), and two-stage
   (``serving.index``): an index of the normalised first 16 or 32 dims, exact (float32 or fp16
   codes, ``--codecs``, as ``serve.prefix_codec``) or HNSW, its best
   ``--rescore`` candidates rescored at the full width. Per configuration: recall@100, the time of
   one-query searches (one FAISS and torch thread, as in a replica) p50/p99 in ms, the index's
   memory (vectors or codes + HNSW links; every catalog also holds the full rows in its Retriever, which
   the rescoring reads) and its build time.

    .venv/bin/python -m benchmarks.retrieval.matryoshka [--sizes 100000 1000000] [--seeds 0 1 2] [--out PATH]

``--index-kinds exact`` leaves HNSW out, the full-width graph too (its build is minutes at 1M).

Writes benchmarks/results/matryoshka_retrieval.json (``--out``) and prints its path.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import RESULTS, header, loads, log, phase, write_result
from infra.settings import ServeSettings
from ingestion.schema import ACTION_IDS
from serving.catalog import CODECS, Catalog, build_index
from serving.index import prefix_rows
from training.common.config import EncoderConfig
from training.common.loss import retrieval_loss
from training.retrieval.model import RetrievalModel
from training.retrieval.retriever import Retriever

RESULT = RESULTS / "matryoshka_retrieval.json"
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "wikipedia.txt"
K = 100
CLICK = ACTION_IDS["click"]  # every event of the data set: a positive action, a softmax term per position


def read_sequences(path: Path) -> list[list[int]]:
    """Each user's items in time order (SASRec format: ``user item`` lines, ids from 1)."""
    users: dict[int, list[int]] = {}
    for line in path.read_text().splitlines():
        user, item = line.split()
        users.setdefault(int(user), []).append(int(item))
    return list(users.values())


def batch_of(sequences: list[list[int]], max_len: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors of the last ``max_len`` items of each sequence."""
    cut = [sequence[-max_len:] for sequence in sequences]
    width = max(len(sequence) for sequence in cut)
    items = torch.zeros((len(cut), width), dtype=torch.long)
    for row, sequence in enumerate(cut):
        items[row, : len(sequence)] = torch.tensor(sequence)
    lengths = torch.tensor([len(sequence) for sequence in cut])
    stamps = torch.arange(width).repeat(len(cut), 1) * 60
    actions = torch.where(items > 0, CLICK, 0)
    return {"item_indices": items, "action_ids": actions, "timestamps": stamps, "lengths": lengths,
            "valid": torch.ones(len(cut), dtype=torch.bool)}  # fmt: skip


def train(
    sequences: list[list[int]], num_items: int, dims: tuple[int, ...], args: argparse.Namespace
) -> RetrievalModel:
    """A SASRec retriever trained with the full-softmax retrieval loss (Matryoshka on ``dims``)."""
    torch.manual_seed(args.train_seed)
    config = EncoderConfig(kind="sasrec", dim=args.dim, num_blocks=2, num_heads=1, max_len=args.max_len,
                           dropout=0.2, matryoshka_dims=dims)  # fmt: skip
    model = RetrievalModel(config, num_items)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    generator = torch.Generator().manual_seed(args.train_seed)
    catalogue = torch.arange(1, num_items + 1)
    model.train()
    for epoch in range(args.epochs):
        order = torch.randperm(len(sequences), generator=generator).tolist()
        total = 0.0
        for start in range(0, len(order), args.batch_size):
            batch = batch_of([sequences[n] for n in order[start : start + args.batch_size]], args.max_len)
            hidden = model(batch["item_indices"], batch["action_ids"], batch["timestamps"], batch["lengths"])
            terms = retrieval_loss(
                hidden, model.item_embedding(batch["item_indices"]), batch, catalogue, model.item_embedding(catalogue),
                temperature=0.05, in_batch_negatives=0, ntr_weight=0.0, kind="full", num_items=num_items,
                prefix_dims=dims,
            )  # fmt: skip
            optimizer.zero_grad()
            terms.total.backward()
            optimizer.step()
            total += terms.total.item()
        steps = -(-len(order) // args.batch_size)
        log(f"  dims {dims or 'none'}: epoch {epoch + 1}/{args.epochs}, loss {total / steps:.3f}")
    return model.eval()


def catalogue(unit_rows: np.ndarray, size: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """(size, D) normalised items, each a random mix of two trained rows plus noise of norm ~``noise``."""
    dim = unit_rows.shape[1]
    out = np.empty((size, dim), dtype=np.float32)
    for start in range(0, size, 100_000):  # chunks keep the temporaries small at 1M items
        n = min(100_000, size - start)
        a, b = rng.integers(0, len(unit_rows), n), rng.integers(0, len(unit_rows), n)
        w = rng.random((n, 1), dtype=np.float32)
        mixed = w * unit_rows[a] + (1 - w) * unit_rows[b]
        mixed += rng.standard_normal((n, dim), dtype=np.float32) * (noise / np.sqrt(dim))
        out[start : start + n] = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
    return out


def index_bytes(index: Any) -> int:
    """Bytes of an index's vectors and, for HNSW, its links (the bulk of what it holds)."""
    import faiss

    if isinstance(index, faiss.IndexScalarQuantizer):
        return int(index.ntotal * index.code_size)
    if hasattr(index, "hnsw"):
        storage = faiss.downcast_index(index.storage)
        return int(storage.ntotal * storage.d * 4 + index.hnsw.neighbors.size() * 4 + index.hnsw.offsets.size() * 8)
    return int(index.ntotal * index.d * 4)


def evaluate(catalog: Catalog, queries: np.ndarray, truth: list[set[int]], timed: int) -> dict[str, Any]:
    """recall@100 over every query (batched) and one-query search times over the first ``timed``."""
    found = []
    for start in range(0, len(queries), 64):
        rows = queries[start : start + 64]
        found += catalog.search(rows, K, [set() for _ in rows])
    recalls = [len(truth[n] & {item for item, _ in row}) / K for n, row in enumerate(found)]
    times = []
    for row in range(min(timed, len(queries))):
        started = time.perf_counter()
        catalog.search(queries[row : row + 1], K, [set()])
        times.append((time.perf_counter() - started) * 1000)
    return {
        "recall_at_100": round(float(np.mean(recalls)), 4),
        "recall_at_100_min": round(float(np.min(recalls)), 2),
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p99_ms": round(float(np.percentile(times, 99)), 3),
    }


def measure(
    model: RetrievalModel, name: str, size: int, seed: int, sequences: list[list[int]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Every configuration's row for one model, catalogue size and seed."""
    import faiss

    serve = ServeSettings()
    rng = np.random.default_rng(seed)
    unit_rows = torch.nn.functional.normalize(model.item_embedding.weight[1:].detach(), dim=-1).numpy()
    vectors = catalogue(unit_rows, size, args.noise, rng)
    rows = torch.from_numpy(np.concatenate([np.zeros((1, vectors.shape[1]), np.float32), vectors]))
    retriever = Retriever(model.encoder, rows)
    del rows
    users = rng.choice(len(sequences), args.queries, replace=False)
    queries = np.concatenate(
        [retriever.queries(batch_of([sequences[n] for n in users[s : s + 256]], args.max_len)).numpy()
         for s in range(0, len(users), 256)]
    )  # fmt: skip
    faiss.omp_set_num_threads(args.build_threads)
    exact, _ = build_index(vectors, size, serve.hnsw_m, serve.hnsw_ef_search)
    _, ids = exact.search(queries, K)
    truth = [set((row + 1).tolist()) for row in ids]
    item_ids = np.zeros(0, dtype=object)  # Catalog.search reads neither ids nor names
    results = []
    layouts = [(0, kind, "flat") for kind in ("exact", "hnsw") if kind in args.index_kinds]
    layouts += [(p, kind, codec) for p in args.prefixes for kind in args.index_kinds
                for codec in (args.codecs if kind == "exact" else ["flat"])]  # fmt: skip
    for prefix, kind, codec in layouts:
        if kind == "hnsw" and name == "control":
            continue  # the control shows the prefix's quality; flat indexes measure it without HNSW's misses
        faiss.omp_set_num_threads(args.build_threads)
        started = time.perf_counter()
        if prefix == 0 and kind == "exact":
            index = exact
        else:
            index, _ = build_index(prefix_rows(vectors, prefix), size if kind == "exact" else 0, serve.hnsw_m,
                                   serve.hnsw_ef_search, codec)  # fmt: skip
        build_s = time.perf_counter() - started
        faiss.omp_set_num_threads(1)  # searches as a replica runs them
        for rescore in args.rescore if prefix else [0]:
            catalog = Catalog("bench", "", retriever, item_ids, {}, index, kind, {}, prefix_dims=prefix,
                              rescore=rescore)  # fmt: skip
            row = {"model": name, "items": size, "seed": seed, "index": kind, "codec": codec,
                   "prefix_dims": prefix or None,
                   "rescore": rescore or None, "ef_search": serve.hnsw_ef_search if kind == "hnsw" else None,
                   "index_mib": round(index_bytes(index) / 2**20, 1), "build_s": round(build_s, 1),
                   **evaluate(catalog, queries, truth, args.timed)}  # fmt: skip
            log(f"  {name} {size:,} seed {seed} {kind} ({codec}) prefix {prefix or 'full'} rescore {rescore or '-'}: "
                f"recall@100 {row['recall_at_100']}, p50 {row['p50_ms']} ms, {row['index_mib']} MiB")  # fmt: skip
            results.append(row)
        if index is not exact:
            del index
            gc.collect()
    return results


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread (min, max) over seeds of each configuration's recall and p50 time."""
    keys = ("model", "items", "index", "codec", "prefix_dims", "rescore")
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in keys), []).append(row)
    out = []
    for key, group in groups.items():
        recall = [row["recall_at_100"] for row in group]
        p50 = [row["p50_ms"] for row in group]
        out.append({**dict(zip(keys, key, strict=True)), "seeds": len(group),
                    "recall_at_100": round(float(np.mean(recall)), 4), "recall_range": [min(recall), max(recall)],
                    "p50_ms": round(float(np.mean(p50)), 3), "p50_range": [min(p50), max(p50)],
                    "index_mib": group[0]["index_mib"]})  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="catalogue and query draws")
    parser.add_argument("--seeds-1m", type=int, nargs="+", help="seeds at sizes >= 1M (default: --seeds)")
    parser.add_argument("--prefixes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--index-kinds", nargs="+", default=["exact", "hnsw"], choices=["exact", "hnsw"])
    parser.add_argument("--codecs", nargs="+", default=["flat", "fp16"], choices=list(CODECS),
                        help="how an exact prefix index stores the prefixes (serve.prefix_codec)")  # fmt: skip
    parser.add_argument("--rescore", type=int, nargs="+", default=[100, 200, 500, 1000, 2000])
    parser.add_argument("--dims", default="16,32", help="Matryoshka widths of the trained model")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.1, help="norm of each item's noise, next to its unit mix")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--timed", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a replica (and the machine is shared)
    load_before = loads()
    sequences = read_sequences(args.data)
    num_items = max(max(sequence) for sequence in sequences)
    dims = tuple(int(width) for width in args.dims.split(","))
    models = {}
    for name, widths in (("matryoshka", dims), ("control", ())):
        with phase(f"train {name}") as record:
            models[name] = train(sequences, num_items, widths, args)
        record["model"] = name
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        for seed in args.seeds_1m if size >= 1_000_000 and args.seeds_1m else args.seeds:
            for name, model in models.items():
                with phase(f"{name} at {size:,} items, seed {seed}"):
                    rows += measure(model, name, size, seed, sequences, args)
            result = {
                **header("matryoshka_retrieval", args, list(args.seeds)),
                "load_before_after": [load_before, loads()],
                "data": f"{args.data.name}: {len(sequences)} users, {num_items} items",
                "catalogue": "each item a random mix of two trained item rows plus Gaussian noise (module docstring)",
                "serve_defaults": {"hnsw_m": ServeSettings().hnsw_m, "hnsw_ef_search": ServeSettings().hnsw_ef_search},
                "summary": summary(rows),
                "rows": rows,
            }
            write_result(args.out, result)  # after each catalogue: a run cut short keeps what it measured
    print(args.out)


if __name__ == "__main__":
    main()

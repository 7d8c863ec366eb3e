"""LRURec answered from live user states vs re-encoding: CPU per request at history lengths 50, 200, 1,000.

In process, no services: what a replica's ``Recommender._search`` calls for a batch, timed on its
own (``serving.answer.answer_batch`` on a serving ``Catalog``: the known-item lookup, the
exclusions, the query, the FAISS search); Ray Serve, HTTP and the history fetch are left out (the
same for every model). One thread for torch and FAISS, as in a replica. What is compared, per
history length L (``--lengths``):

* ``hstu``: HSTU re-encodes the user's last L events per request (what every model but LRURec does);
* ``lrurec_reencode``: LRURec the same way (``serve.lrurec_state_users = 0``);
* ``lrurec_state``: LRURec from each user's live state (``serving.user_state``), one new event
  since the user's last request stepped in (``LRURec.step``), the held window sliding by one.

The encoders have ``max_len`` 1,000 (so a re-encode reads all L events), dim ``--dim``, 2 blocks,
random weights (the cost does not depend on their values) over ``--items`` items (exact FAISS
search). Each request is a /recommend of one stored user (k 10, seen items excluded: the search
asks for k + the user's distinct items), ``--users`` users asked in turn, ``--requests`` timed
requests after one untimed round (which builds the states; its CPU per user is reported as
``build_ms``). CPU time is ``time.process_time`` (this process only, so other work on the
machine slows it less than wall time would); ``query_ms`` is the query alone (``Catalog.encode``
or ``LRURecStates.queries``). Each seed (``--seeds``) draws other weights and histories.

    nice .venv/bin/python -m benchmarks.serve.lrurec_incremental [--lengths 50 200 1000] [--seeds 0 1 2]

Writes benchmarks/results/lrurec_incremental.json (``--out``) and prints its path.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import RESULTS, header, loads, log, phase, write_result
from ingestion.schema import ACTIONS
from serving.answer import Request, answer_batch
from serving.catalog import Catalog, build_index
from serving.history.store import HistoryRevision
from serving.user_state import LRURecStates, state_bytes
from training.common.config import EncoderConfig
from training.retrieval.model import RetrievalModel
from training.retrieval.retriever import Retriever

RESULT = RESULTS / "lrurec_incremental.json"
MAX_LEN = 1_000
BLOCKS = 2
K = 10
MODES = ("hstu", "lrurec_reencode", "lrurec_state")
Events = list[tuple[str, str, int]]


def catalog(kind: str, args: argparse.Namespace, seed: int) -> Catalog:
    """A serving catalogue of a randomly initialised ``kind`` encoder over ``args.items`` items."""
    torch.manual_seed(seed)
    config = EncoderConfig(kind=kind, dim=args.dim, num_blocks=BLOCKS, max_len=MAX_LEN)
    model = RetrievalModel(config, args.items).eval()
    retriever = Retriever(model.encoder, model.item_embedding.weight)
    item_ids = np.array(["", *(f"item-{n}" for n in range(1, args.items + 1))], dtype=object)
    index, kind_of_index = build_index(retriever.item_vectors[1:].numpy(), args.items, 32, 128)
    index_of = {item: n for n, item in enumerate(item_ids.tolist()) if n}
    return Catalog("1", "bench", retriever, item_ids, index_of, index, kind_of_index, {})


class Users:
    """``count`` stored users, each with a window of the last ``length`` events that slides by one
    new event per request, and the HistoryRevision the online history would report."""

    def __init__(self, count: int, length: int, items: int, rng: random.Random) -> None:
        self.rng, self.items = rng, items
        self.windows = [[self._event(ts) for ts in range(length)] for _ in range(count)]
        self.appended = [length] * count
        self.clock = length

    def _event(self, ts: int) -> tuple[str, str, int]:
        return (f"item-{self.rng.randint(1, self.items)}", self.rng.choice(ACTIONS), 1_000 * ts)

    def request(self, user: int, new_event: bool) -> Request:
        """User ``user``'s /recommend; ``new_event``: one more event arrived since their last request."""
        if new_event:
            self.clock += 1
            self.windows[user] = [*self.windows[user][1:], self._event(self.clock)]
            self.appended[user] += 1
        revision = HistoryRevision("bench", self.appended[user], 0)
        return (list(self.windows[user]), K, True, (f"user-{user}", revision))


def timed(function: Callable[..., Any], *args: Any) -> float:
    """CPU milliseconds of this process in ``function(*args)``."""
    started = time.process_time()
    function(*args)
    return (time.process_time() - started) * 1e3


def measure(mode: str, length: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One (mode, length, seed): CPU ms per request, the query alone, and the first round's build."""
    served = catalog("hstu" if mode == "hstu" else "lrurec", args, seed)
    states = LRURecStates(args.users) if mode == "lrurec_state" else None
    users = Users(args.users, length, args.items, random.Random(seed))
    build = [timed(answer_batch, served, [users.request(user, False)], states) for user in range(args.users)]
    per_request = []
    for n in range(args.requests):
        request = users.request(n % args.users, new_event=True)
        per_request.append(timed(answer_batch, served, [request], states))
    per_query = []  # then the query alone (Catalog.encode or LRURecStates.queries), again one new event each
    for n in range(args.requests // 2):
        events, _, _, stored = users.request(n % args.users, new_event=True)
        assert stored is not None
        if states is None:
            known = served.known(events)
            per_query.append(timed(served.encode, [known]))
        else:
            per_query.append(timed(states.queries, served, [(stored[0], stored[1], events)]))
    row: dict[str, Any] = {
        "mode": mode,
        "length": length,
        "seed": seed,
        "requests": args.requests,
        "ms_median": round(statistics.median(per_request), 3),
        "ms_mean": round(statistics.fmean(per_request), 3),
        "ms_p90": round(float(np.percentile(per_request, 90)), 3),
        "query_ms_median": round(statistics.median(per_query), 3),
        "build_ms_median": round(statistics.median(build), 3),
    }
    if states is not None:
        row["states"] = states.status()
        row["held_bytes_per_user"] = held_bytes_per_user(served, users)
    return row


def held_bytes_per_user(served: Catalog, users: Users) -> int:
    """The memory one user's state holds, arrays and Python objects: what freeing the states of
    every user gives back (tracemalloc), per user; measured apart from the timed requests."""
    states = LRURecStates(len(users.windows))
    asked = []
    for user in range(len(users.windows)):
        events, _, _, stored = users.request(user, False)
        assert stored is not None
        asked.append((stored[0], stored[1], events))
    tracemalloc.start()
    states.queries(served, asked)
    held = tracemalloc.get_traced_memory()[0]
    states.clear()
    freed = held - tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return round(freed / len(asked))


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (mode, length): mean and std over seeds of the per-seed median CPU ms per request."""
    out = []
    for mode in MODES:
        for length in sorted({row["length"] for row in rows}):
            mine = [row for row in rows if row["mode"] == mode and row["length"] == length]
            if not mine:
                continue
            medians = [row["ms_median"] for row in mine]
            queries = [row["query_ms_median"] for row in mine]
            out.append({
                "mode": mode,
                "length": length,
                "seeds": len(mine),
                "cpu_ms_per_request_mean": round(statistics.fmean(medians), 3),
                "cpu_ms_per_request_std": round(statistics.stdev(medians), 3) if len(medians) > 1 else 0.0,
                "query_cpu_ms_mean": round(statistics.fmean(queries), 3),
                "build_cpu_ms_mean": round(statistics.fmean(row["build_ms_median"] for row in mine), 3),
            })  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    if max(args.lengths) > MAX_LEN:
        parser.error(f"lengths above the encoders' max_len {MAX_LEN} would be cut by a re-encode")
    import faiss

    torch.set_num_threads(1)  # as in a replica (serving.app.Recommender)
    faiss.omp_set_num_threads(1)
    load_before = loads()
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        for length in args.lengths:
            for mode in MODES:
                with phase(f"{mode}, length {length}, seed {seed}"):
                    rows.append(measure(mode, length, seed, args))
                log(f"  {rows[-1]['ms_median']} ms CPU per request")
    result = {
        **header("lrurec_incremental", args, list(args.seeds)),
        "load_before_after": [load_before, loads()],
        "what": "CPU ms per /recommend answer_batch call of one stored user (module docstring); in process",
        "state_bytes_per_user": state_bytes(args.dim, BLOCKS),
        "summary": summary(rows),
        "rows": rows,
    }
    write_result(args.out, result)
    for line in result["summary"]:
        print(line)
    print(args.out)


if __name__ == "__main__":
    main()

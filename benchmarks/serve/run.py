"""Serving benchmark: latency against a no-op Ray Serve app, catalogue sizes, HNSW recall,
freshness and a promotion under load, on a private mini-cluster.

Starts its own broker, MLflow and Ray head (free ports, temporary home), then in one run:

1. Pipeline: synthetic events -> a topic -> ``run_ingest(until_idle=True)`` -> the feature
   build -> a small HSTU trained on Ray Train (registered by ``train``) -> ``promote`` ->
   ``serving.deploy.deploy``; beside the real app, in the same Serve instance, a no-op app
   (``benchmarks.common.noop``: the same FastAPI ingress shape, no work) under ``/noop``.
2. Catalogue sizes (``--sizes``, default 10k, 100k, 1M items): for each size N a model
   version with N items. Bench items are appended to ``features/item_vocab`` (indices after
   the real ones, the same schema and build record the feature build writes, so
   ``recorded_state`` still reads its silver version and max_len); the version's weights are
   the trained model's encoder and item rows, plus rows N_real+1..N that are *perturbed
   copies of trained rows*: the row of a random real item plus Gaussian noise of
   ``--noise`` x (that row's norm / sqrt(dim)) per coordinate (cosine about 0.9 to the
   original at 0.5). The catalogue so keeps the cluster structure of real embeddings
   (every real item gets a neighbourhood of near copies, a hard case for approximate
   search) instead of uniform random vectors that no real query is near. The version is
   saved with ``save_model`` (feature versions: the real user_sequences version and the new
   item_vocab version), logged as an MLflow run's ``model`` artifact, registered, promoted,
   and served once /healthz shows it (the swap's load + index seconds from /healthz).
   Sizes above ``serve_exact_max_items`` are searched by HNSW.
3. HNSW recall@100 against exact search at the largest size, offline in this process:
   ``serving.catalog.build_index`` both ways on the served vectors, queries from
   ``Catalog.encode`` of real user histories (``--recall-queries``), for several efSearch
   values, each with its single-query time.
4. Load: an open-loop generator (``benchmarks.common.loadgen``: fixed schedule, latency from the scheduled
   time, bounded in-flight). First the highest rate the no-op holds (achieved >= 95% of the
   target, no error, p99 < ``--hold-p99-ms``); then at each size /recommend and /retrieve
   (random known users) at that rate and at half of it, each rate with the no-op measured
   right before the two endpoints, and the p99 ratio to it; and at a light rate
   (``--low-rate``) as well. At ``--extras-at`` items the no-op and /recommend are measured
   at the top rate ``--knee-pairs`` times in all, in alternating order, since one p99 at the
   knee swings several-fold between runs: the target's verdict is the median of the pairs'
   p99 ratios, each pair counted only where the no-op held the rate. Where the no-op fails the
   top rate in most pairs (its one success on the ladder was luck), the pairs are measured
   again at the next lower rate it held.
5. Freshness (at ``--extras-at`` items): for known users, the top item of /recommend, a
   click on it produced to Kafka, /recommend polled every ``--poll-ms`` until the item
   leaves the list; freshness = arrival of the first changed answer - the produce call.
6. A promotion under load (at ``--extras-at`` items): a copy of the served version is
   registered and promoted while /recommend runs open loop, at the highest measured rate it
   held there (no error, p99 under ``--hold-p99-ms``; so a failure is the swap's, not
   overload's); failed requests, time from the promote call to the first answer of the new
   version, and the swap's load seconds.
7. Ingresses (``--ingresses``, default haproxy then python): phases 1-6 run under the first;
   then, on the last catalogue served, the capacity of the no-op and of /recommend under each
   ingress in turn: the highest of ``--capacity-rates`` held (achieved >= 95%, no error, p99
   <= ``--capacity-p99-ms``; a failing step is measured once more). The ingress is the Ray
   head's environment, so the head is restarted for each one after the first (Kafka, MLflow
   and the lake stay) and the app and the no-op deployed again: both in one run, minutes
   apart, so their ratio is the gain of the ingress on this machine at that time.

Every load run also records the CPU time of this run's own processes by role (``benchmarks.common.cpu``:
proxy, replicas, history shard, generator...) per scheduled request, their busy cores and
the whole machine's, so starvation by other work on the machine shows in the JSON.

    .venv/bin/python -m benchmarks.serve [--sizes 10000 100000 1000000] [--duration 20] [--quick]

Writes benchmarks/results/serve.json (``--out``) and prints a summary table. Each phase
records the load averages before and after it: only ratios measured side by side in this run
compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch

from benchmarks.common import loadgen
from benchmarks.common.cpu import CpuMeter
from benchmarks.common.loadgen import holds, keeps_up, summary_line
from benchmarks.harness import (
    PHASES,
    RESULTS,
    header,
    loads,
    log,
    phase,
    private_settings,
    run_in_private_home,
    shutdown,
    with_preset,
    write_result,
)
from features.tables import ITEM_VOCAB_SCHEMA, ITEM_VOCAB_TABLE, USER_SEQUENCES_TABLE, build_record, recorded_state
from infra import cluster
from infra.settings import Settings

RESULT = RESULTS / "serve.json"
TARGETS = {
    "recommend_p99_over_noop_at_100k_items_max_rate": 2.0,
    "hnsw_recall_at_100_default_ef": 0.95,
    "freshness_p95_s": 1.0,
    "swap_under_load_failed_requests": 0,
}
# Defaults of the full run and of --quick (options given on the command line win).
FULL = dict(users=2_000, items=5_000, events=100_000, epochs=3, sizes=[10_000, 100_000, 1_000_000], duration=20.0,
            search_duration=15.0, low_duration=10.0, noop_rates=[50, 100, 150, 175, 200, 250, 300],
            freshness_users=50, recall_queries=500, swap_duration=30.0, knee_pairs=5,
            capacity_rates=[100, 200, 300, 400, 600, 800, 1000, 1200, 1500])  # fmt: skip
QUICK = dict(users=500, items=2_000, events=20_000, epochs=1, sizes=[10_000], duration=5.0, search_duration=5.0,
             low_duration=5.0, noop_rates=[50, 100, 200], freshness_users=10, recall_queries=200,
             swap_duration=12.0, knee_pairs=2, capacity_rates=[100, 200, 400, 800])  # fmt: skip

METER: list[CpuMeter] = []  # set once the cluster is up


# Setup ----------------------------------------------------------------------------------


def settings_for(home: Path, args: argparse.Namespace) -> Settings:
    """The private cluster's settings, with names of this benchmark's own."""
    env = {
        "STREAMREC_TOPIC": "bench-serve",
        "STREAMREC_REGISTERED_MODEL": "bench-serve-retrieval",
        "STREAMREC_MLFLOW_EXPERIMENT": "bench-serve",
        "STREAMREC_TRAIN_WORKERS": str(args.workers),
    }
    if args.exact_max_items:
        env["STREAMREC_SERVE_EXACT_MAX_ITEMS"] = str(args.exact_max_items)
    env["STREAMREC_SERVE_INGRESS"] = args.ingresses[0]
    return private_settings(home, **env)


def pipeline(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Synthetic events -> Kafka -> ingest -> features -> HSTU -> registered, promoted and served."""
    from features.build import build
    from ingestion.producer import encode_event, produce
    from ingestion.stream import run_ingest
    from ingestion.synthetic import SyntheticConfig, generate_events
    from serving.deploy import deploy
    from serving.registry import promote
    from training.common.config import EncoderConfig
    from training.retrieval.config import TrainConfig
    from training.retrieval.runner import train

    out: dict[str, Any] = {}
    with phase("cluster up"):
        cluster.up(settings, ["kafka", "mlflow", "ray"])  # the broker's start creates the topic
        METER.append(CpuMeter(settings))
    synthetic = SyntheticConfig(users=args.users, items=args.items, events=args.events, seed=args.seed)
    with phase("produce"):
        events = list(generate_events(synthetic))
        produced = produce((encode_event(e) for e in events), settings, total=len(events), show_progress=False)
    out["synthetic"] = {"users": synthetic.users, "items": synthetic.items, "events": synthetic.events,
                        "produced_per_s": round(produced.rate)}  # fmt: skip
    with phase("ingest (until idle)"):
        run_ingest(settings, until_idle=True, report=lambda *_: None)
    with phase("features build"):
        build(settings, incremental=True, log=lambda *_: None)
    config = TrainConfig(
        encoder=EncoderConfig(kind="hstu", dim=args.dim, max_len=args.max_len), epochs=args.epochs, patience=0
    )
    with phase("train"):
        run = train(settings, config, workers=args.workers, log=lambda *_: None)
    out["train"] = {"model_version": run.model_version, "epochs": args.epochs, "workers": args.workers,
                    "encoder": config.encoder.model_dump(mode="json"),
                    "test_ndcg_10": round(run.metrics.get("test_ndcg_10", float("nan")), 4)}  # fmt: skip
    with phase("deploy"):
        promote(settings, run.model_version)
        health = deploy(settings)
        deploy_noop(settings)
    out["served"] = {"version": health["model"]["version"], "items": health["model"]["items"],
                     "index": health["model"]["index"]}  # fmt: skip
    out["known_users"] = sorted({event["user_id"] for event in events})
    return out


def deploy_noop(settings: Settings) -> None:
    """The no-op app in the same Serve instance as the real one; returns once it answers."""
    from ray import serve

    from benchmarks.common.noop import APP_NAME, ROUTE_PREFIX, noop_app

    app = noop_app(settings.serve.max_ongoing_requests, settings.serve.max_queued_requests)
    serve.run(app, name=APP_NAME, route_prefix=ROUTE_PREFIX, blocking=False)
    url = f"{base(settings)}{ROUTE_PREFIX}/recommend"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.post(url, json={"user_id": "u1"}, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the no-op app at {url} did not answer in 120 s")


def base(settings: Settings) -> str:
    from serving.deploy import base_url

    return base_url(settings)


# Catalogue versions -----------------------------------------------------------------------


class Catalogues:
    """Model versions of the trained encoder over catalogues of N items (perturbed copies)."""

    def __init__(self, settings: Settings, version: str, max_items: int, noise: float, seed: int) -> None:
        from training.common import tracking
        from training.common.model import PLAIN_WEIGHT
        from training.retrieval.io import read_info, read_weights

        self.settings = settings
        with tracking.downloaded_version(settings, version) as directory:
            self.info = read_info(directory)
            self.weights = read_weights(directory)
        trained = self.weights[PLAIN_WEIGHT].float()
        self.real_items = self.info.num_items
        self.dim = trained.shape[1]
        self.noise = noise
        total = max(max_items, self.real_items)
        generator = torch.Generator().manual_seed(seed)
        table = torch.empty((total + 1, self.dim), dtype=torch.float32)
        table[: self.real_items + 1] = trained
        extra = total - self.real_items
        if extra:
            source = torch.randint(1, self.real_items + 1, (extra,), generator=generator)
            rows = trained[source]
            scale = noise * rows.norm(dim=1, keepdim=True) / math.sqrt(self.dim)
            table[self.real_items + 1 :] = rows + scale * torch.randn((extra, self.dim), generator=generator)
        self.table = table
        self.sequences_version = self.info.feature_versions[USER_SEQUENCES_TABLE]

    def append_vocab(self, items: int) -> int:
        """Append bench items to features/item_vocab up to ``items``; the vocab version holding them."""
        import pyarrow as pa
        from deltalake import DeltaTable, write_deltalake

        uri = self.settings.table_uri(ITEM_VOCAB_TABLE)
        table = DeltaTable(uri)
        have = int(table.to_pyarrow_table(columns=["item_index"])["item_index"].to_numpy().max())
        if items <= have:
            return int(table.version())
        state = recorded_state(uri)
        if state is None:
            raise RuntimeError(f"{ITEM_VOCAB_TABLE} records no build state")
        indices = np.arange(have + 1, items + 1, dtype=np.int64)
        now = int(time.time() * 1000)
        rows = pa.table(
            {
                "item_id": pa.array([f"bench-{index}" for index in indices.tolist()], pa.string()),
                "item_index": pa.array(indices, pa.int64()),
                "first_seen_ts": pa.array(np.full(len(indices), now, np.int64), pa.int64()),
            },
            schema=ITEM_VOCAB_SCHEMA,
        )
        write_deltalake(uri, rows, mode="append", commit_properties=build_record(*state))
        version = int(DeltaTable(uri).version())
        if recorded_state(uri, version) != state:
            raise RuntimeError(f"{ITEM_VOCAB_TABLE} v{version} lost its build state {state}")
        return version

    def register(self, items: int, scratch: Path) -> tuple[str, str, dict[str, float]]:
        """A registered version over ``items`` items; (version, run id, seconds per step)."""
        from training.common import tracking
        from training.common.model import PLAIN_WEIGHT
        from training.retrieval.io import ModelInfo, save_model

        seconds: dict[str, float] = {}
        started = time.perf_counter()
        vocab_version = self.append_vocab(items)
        seconds["vocab_append"] = time.perf_counter() - started
        versions = {USER_SEQUENCES_TABLE: self.sequences_version, ITEM_VOCAB_TABLE: vocab_version}
        weights = {**self.weights, PLAIN_WEIGHT: self.table[: items + 1].clone()}
        directory = scratch / f"catalogue-{items}"
        started = time.perf_counter()
        save_model(directory, ModelInfo(self.info.encoder, items, versions), weights)
        seconds["save_model"] = time.perf_counter() - started
        started = time.perf_counter()
        run_id = tracking.start_run(
            self.settings,
            f"bench-catalogue-{items}",
            params={"items": str(items), "real_items": str(self.real_items), "noise": str(self.noise)},
            tags={"benchmark": "serve", "catalogue": "perturbed copies of trained rows"},
            feature_versions=versions,
        )
        tracking.log_artifacts(self.settings, run_id, directory, "model")
        version = tracking.register(self.settings, run_id, "model", tags={"bench_items": str(items)})
        tracking.client(self.settings).set_terminated(run_id, "FINISHED")
        seconds["log_and_register"] = time.perf_counter() - started
        shutil.rmtree(directory, ignore_errors=True)
        return version, run_id, {key: round(value, 2) for key, value in seconds.items()}


def register_copy(settings: Settings, version: str) -> str:
    """A new registered version with the files of ``version`` (same source and run)."""
    from training.common import tracking

    client = tracking.client(settings)
    source = client.get_model_version(settings.mlflow.registered_model, version)
    if source.source is None:
        raise RuntimeError(f"{settings.mlflow.registered_model} version {version} names no source to copy")
    return str(
        client.create_model_version(settings.mlflow.registered_model, source.source, run_id=source.run_id).version
    )


def healthz(settings: Settings) -> dict[str, Any]:
    try:
        return dict(requests.get(f"{base(settings)}/healthz", timeout=30).json())
    except (requests.RequestException, ValueError) as error:
        return {"model": None, "last_error": f"no answer: {error.__class__.__name__}", "swaps": []}


def promote_and_wait(settings: Settings, version: str, timeout_s: float) -> dict[str, Any]:
    """Promote ``version`` and wait until /healthz serves it; the swap's figures."""
    from serving.registry import promote

    started = time.perf_counter()
    promote(settings, version)
    while time.perf_counter() - started < timeout_s:
        health = healthz(settings)
        model = health.get("model") or {}
        if model.get("version") == version:  # the replica publishes the model and its swap record together
            swap = health["swaps"][-1]
            return {
                "version": version,
                "items": model["items"],
                "index": model["index"],
                "swap_load_and_index_s": round(swap["load_seconds"], 2),
                "promote_to_healthz_s": round(time.perf_counter() - started, 2),
            }
        if health.get("last_error") and f"version {version} " in health["last_error"]:
            raise RuntimeError(health["last_error"])
        time.sleep(0.5)
    raise RuntimeError(f"version {version} was not served within {timeout_s:.0f} s")


# Load -------------------------------------------------------------------------------------


def bodies(users: list[str], path: str, count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    k = 10 if path == "/recommend" else 100
    return [json.dumps({"user_id": rng.choice(users), "k": k}).encode() for _ in range(count)]


def measure(
    settings: Settings, path: str, rate: float, duration: float, users: list[str], seed: int, **kwargs: Any
) -> dict[str, Any]:
    """One open-loop run of ``path`` at ``rate`` for ``duration`` seconds (random known users)."""
    spec = loadgen.LoadSpec(
        url=f"{base(settings)}{path}", rate=rate, duration_s=duration, bodies=bodies(users, path, 4_096, seed)
    )
    before = METER[0].snapshot()
    result = loadgen.run(spec, **kwargs)
    result.update(path=path, **METER[0].usage(before, METER[0].snapshot(), result["scheduled"]))
    time.sleep(1.0)  # let what the run left (replica queues, GC) settle before the next
    return result


def ladder(
    settings: Settings, users: list[str], path: str, rates: list[float], duration: float, p99_ms: float
) -> tuple[float | None, list[dict[str, Any]]]:
    """The highest of ``rates`` that ``path`` holds, and every step: a step that fails is
    measured once more, and a second failure ends the ladder."""
    steps, best = [], None
    for rate in rates:
        for attempt in range(2):
            result = measure(settings, path, rate, duration, users, seed=int(rate) + attempt)
            result["holds"] = holds(result, p99_ms)
            if attempt:
                result["retry"] = True
            steps.append(result)
            log(f"  {path} at {rate:g}/s{' again' if attempt else ''}: {summary_line(result)} holds={result['holds']}")
            if result["holds"]:
                break
        if not steps[-1]["holds"]:
            break
        best = rate
    return best, steps


def noop_max_rate(settings: Settings, args: argparse.Namespace, users: list[str]) -> dict[str, Any]:
    """The highest stepped rate the no-op holds (a failing step is measured once more)."""
    from benchmarks.common.noop import ROUTE_PREFIX

    best, steps = ladder(
        settings, users, f"{ROUTE_PREFIX}/recommend", args.noop_rates, args.search_duration, args.hold_p99_ms
    )
    return {"max_rate": best, "hold_rule": f"achieved >= 95% of target, no errors, p99 < {args.hold_p99_ms} ms",
            "steps": steps}  # fmt: skip


def restart_head(settings: Settings) -> None:
    """A new Ray head with the environment of ``settings`` (its ingress); the driver, Serve and
    its applications go with the old head."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    cluster.down(settings, ["ray"])
    cluster.up(settings, ["ray"])
    METER[0] = CpuMeter(settings)


def ingress_comparison(settings: Settings, args: argparse.Namespace, users: list[str]) -> dict[str, Any]:
    """The capacity of the no-op and of /recommend under each of ``--ingresses``, one after the
    other on the served catalogue; the head restarted for each ingress it does not run."""
    from benchmarks.common.noop import ROUTE_PREFIX
    from serving.deploy import cluster_ingress, deploy

    out: dict[str, Any] = {
        "hold_rule": f"achieved >= 95% of target, no errors, p99 <= {args.capacity_p99_ms} ms",
        "rates": args.capacity_rates,
        "by_ingress": {},
    }
    for ingress in args.ingresses:
        current = settings.updated(serve_ingress=ingress)
        if cluster_ingress(current) != ingress:
            with phase(f"ingress {ingress}: restart the head, deploy"):
                restart_head(current)
                health = deploy(current)
                deploy_noop(current)
            log(f"  serving version {health['model']['version']} ({health['model']['items']:,} items) again")
        entry: dict[str, Any] = {"running": cluster_ingress(current)}
        for label, path in (("no-op", f"{ROUTE_PREFIX}/recommend"), ("/recommend", "/recommend")):
            with phase(f"ingress {ingress}: capacity of {label}"):
                best, steps = ladder(current, users, path, args.capacity_rates, args.search_duration,
                                     args.capacity_p99_ms)  # fmt: skip
            entry[label] = {"capacity": best, "steps": steps}
            log(f"  {ingress}: {label} holds {best}/s")
        out["by_ingress"][ingress] = entry
    found = out["by_ingress"]
    if {"haproxy", "python"} <= set(found):
        out["haproxy_over_python"] = {
            label: round(found["haproxy"][label]["capacity"] / found["python"][label]["capacity"], 2)
            if found["haproxy"][label]["capacity"] and found["python"][label]["capacity"]
            else None
            for label in ("no-op", "/recommend")
        }
    return out


def size_load(settings: Settings, args: argparse.Namespace, users: list[str], rates: list[float]) -> list[dict]:
    """/recommend and /retrieve at each rate, each rate with the no-op measured right before them."""
    from benchmarks.common.noop import ROUTE_PREFIX

    for path in ("/recommend", "/retrieve"):  # warm-up: first queries of a new catalogue
        measure(settings, path, args.low_rate, 3.0, users, seed=7)
    rows = []
    for rate in rates:
        seed = int(rate)
        duration = args.low_duration if rate == args.low_rate else args.duration
        noop = measure(settings, f"{ROUTE_PREFIX}/recommend", rate, duration, users, seed=seed)
        rows.append({"endpoint": "no-op", "rate": rate, **noop, "noop_p99_ms": noop["p99_ms"], "p99_over_noop": 1.0})
        log(f"  {'no-op':<10} at {rate:g}/s: {summary_line(noop)}")
        for path in ("/recommend", "/retrieve"):
            result = measure(settings, path, rate, duration, users, seed=seed)
            ratio = result["p99_ms"] / noop["p99_ms"] if result["p99_ms"] and noop["p99_ms"] else None
            over = round(ratio, 2) if ratio else None
            rows.append(
                {"endpoint": path, "rate": rate, **result, "noop_p99_ms": noop["p99_ms"], "p99_over_noop": over}
            )
            if keeps_up(result) and keeps_up(noop):  # per request, side by side; not under overload
                extra = result["cpu_ms_per_request_total"] - noop["cpu_ms_per_request_total"]
                rows[-1]["cpu_ms_per_request_over_noop"] = round(extra, 2)
            log(f"  {path:<10} at {rate:g}/s: {summary_line(result)} p99/no-op={over}")
    return rows


def knee_studies(
    settings: Settings, args: argparse.Namespace, users: list[str], rows: list[dict], held_rates: list[float]
) -> list[dict[str, Any]]:
    """Knee pairs at the no-op's highest held rate; if the no-op fails it in most of them (the
    ladder's one success was luck), again at the next lower rate it held. The first study with
    a median ratio is the verdict's."""
    studies = []
    for rate in sorted(held_rates, reverse=True)[:2]:
        pairs = knee_pairs(settings, args, users, rows, rate)
        studies.append({"rate": rate, "pairs": pairs, "median_p99_ratio": median_p99_ratio(pairs)})
        log(f"  knee pairs at {rate:g}/s: ratios {[pair['p99_ratio'] for pair in pairs]}, "
            f"median {studies[-1]['median_p99_ratio']}")  # fmt: skip
        if studies[-1]["median_p99_ratio"] is not None:
            break
    return studies


def knee_pairs(
    settings: Settings, args: argparse.Namespace, users: list[str], rows: list[dict], rate: float
) -> list[dict[str, Any]]:
    """``--knee-pairs`` side-by-side p99s of the no-op and /recommend at ``rate``: the pair that
    ``size_load`` measured there if any (no-op first), then more, alternating which goes first."""
    from benchmarks.common.noop import ROUTE_PREFIX

    first = {row["endpoint"]: row for row in rows if row["rate"] == rate}
    pairs = []
    if "no-op" in first and "/recommend" in first:
        pairs.append(pair_figures(first["no-op"], first["/recommend"], args.hold_p99_ms, first=0))
    for index in range(len(pairs), args.knee_pairs):
        order = ["/recommend", "no-op"] if index % 2 else ["no-op", "/recommend"]
        measured = {}
        for endpoint in order:
            path = f"{ROUTE_PREFIX}/recommend" if endpoint == "no-op" else endpoint
            measured[endpoint] = measure(settings, path, rate, args.duration, users, seed=int(rate) + 100 * index)
        pairs.append(pair_figures(measured["no-op"], measured["/recommend"], args.hold_p99_ms, first=index % 2))
        log(f"  pair {index + 1} at {rate:g}/s: {json.dumps(pairs[-1])}")
    return pairs


def pair_figures(noop: dict, recommend: dict, hold_p99_ms: float, first: int) -> dict[str, Any]:
    """One side-by-side pair: each p99, whether each kept up, and the ratio where the no-op held."""
    held = holds(noop, hold_p99_ms)
    ratio = recommend["p99_ms"] / noop["p99_ms"] if held and keeps_up(recommend) else None
    return {
        "first": ["no-op", "/recommend"][first],
        "noop_p99_ms": noop["p99_ms"],
        "noop_holds": held,
        "recommend_p99_ms": recommend["p99_ms"],
        "recommend_p50_ms": recommend["p50_ms"],
        "noop_p50_ms": noop["p50_ms"],
        "recommend_keeps_up": keeps_up(recommend),
        "cpu_ms_per_request": {
            "no-op": noop["cpu_ms_per_request_total"],
            "/recommend": recommend["cpu_ms_per_request_total"],
        },  # fmt: skip
        "p99_ratio": None if ratio is None else round(ratio, 2),
    }


# Freshness and swap under load ------------------------------------------------------------


def freshness(settings: Settings, users: list[str], count: int, poll_ms: float, seed: int) -> dict[str, Any]:
    """Per user: top /recommend item, a click on it to Kafka, poll until it leaves the list."""
    from ingestion.producer import encode_event, open_producer

    url = f"{base(settings)}/recommend"
    session = requests.Session()
    producer = open_producer(settings)
    lags, misses, polls = [], 0, []
    try:
        for user in random.Random(seed).sample(users, min(count, len(users))):
            items = [item["item_id"] for item in session.post(url, json={"user_id": user}, timeout=10).json()["items"]]
            if not items:
                misses += 1
                continue
            top = items[0]
            event = {"event_id": f"fresh-{uuid.uuid4().hex}", "user_id": user, "item_id": top, "action": "click",
                     "ts": int(time.time() * 1000)}  # fmt: skip
            record = encode_event(event)
            produced = time.perf_counter()
            producer.send(settings.kafka.topic, key=record.key, value=record.value)
            producer.flush()
            tries = 0
            while time.perf_counter() - produced < 10.0:
                tries += 1
                body = session.post(url, json={"user_id": user}, timeout=10).json()
                arrived = time.perf_counter()
                if top not in [item["item_id"] for item in body["items"]]:
                    lags.append(arrived - produced)
                    polls.append(tries)
                    break
                time.sleep(poll_ms / 1000)
            else:
                misses += 1
    finally:
        producer.close()
    lags.sort()
    return {
        "users": min(count, len(users)),
        "changed": len(lags),
        "missed_within_10_s": misses,
        "poll_every_ms": poll_ms,
        "p50_s": round(statistics.median(lags), 3) if lags else None,
        "p95_s": round(float(np.percentile(lags, 95)), 3) if lags else None,
        "max_s": round(lags[-1], 3) if lags else None,
        "mean_polls": round(statistics.mean(polls), 1) if polls else None,
        "definition": "arrival of the first /recommend answer without the clicked top item - the produce call "
        "(send + flush, acks=all); exclude_seen true",
    }


def swap_under_load(
    settings: Settings, users: list[str], rate: float, duration: float, current: str, promote_after_s: float
) -> dict[str, Any]:
    """Promote a copy of the served version while /recommend runs open loop."""
    from serving.registry import promote

    new = register_copy(settings, current)
    name = settings.mlflow.registered_model
    seen: list[tuple[float, str]] = []
    marks: dict[str, float] = {}

    def on_body(arrived: float, payload: bytes) -> None:
        seen.append((arrived, json.loads(payload)["lineage"]["model_version"][name]))

    async def side(start: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, start + promote_after_s - loop.time()))
        marks["promote_called"] = loop.time()
        await loop.run_in_executor(None, promote, settings, new)
        marks["promote_returned"] = loop.time()

    result = measure(settings, "/recommend", rate, duration, users, seed=11, on_body=on_body, side=side)
    seen.sort()
    first_new = next((at for at, version in seen if version == new), None)
    after_first = [version for at, version in seen if first_new is not None and at >= first_new]
    health = healthz(settings)
    swap = [s for s in health.get("swaps", []) if s["to_version"] == new]
    return {
        "from_version": current,
        "to_version": new,
        "rate": rate,
        "load": result,
        "failed_requests": result["errors"],
        "promote_call_s": round(marks["promote_returned"] - marks["promote_called"], 3),
        "promote_to_first_new_response_s": round(first_new - marks["promote_called"], 3) if first_new else None,
        "old_version_answers_after_first_new": sum(version != new for version in after_first),
        "answers_by_version": {v: sum(1 for _, x in seen if x == v) for v in sorted({x for _, x in seen})},
        "swap_load_and_index_s": round(swap[-1]["load_seconds"], 2) if swap else None,
        "model_poll_s": settings.serve.model_poll_s,
    }


# HNSW recall ------------------------------------------------------------------------------


def hnsw_recall(
    settings: Settings,
    catalogues: Catalogues,
    items: int,
    queries_wanted: int,
    ef_values: list[int],
    seed: int,
    threads: int,
) -> dict[str, Any]:
    """Recall@100 of HNSW against exact search on the catalogue's vectors, real user queries."""
    import faiss
    from deltalake import DeltaTable

    from serving.catalog import Catalog, build_index
    from training.retrieval.model import RetrievalModel
    from training.retrieval.retriever import Retriever

    faiss.omp_set_num_threads(threads)  # as in the replicas (Ray gives a num_cpus=0 actor OMP_NUM_THREADS=1)
    model = RetrievalModel(catalogues.info.encoder, catalogues.real_items)
    model.load_state_dict(catalogues.weights)
    retriever = Retriever(model.eval().encoder, catalogues.table[: items + 1], catalogues.info)
    catalog = Catalog("offline", "", retriever, np.zeros(0, object), {}, None, "none", {})
    sequences = DeltaTable(settings.table_uri(USER_SEQUENCES_TABLE), version=catalogues.sequences_version)
    rows = sequences.to_pyarrow_table(columns=["item_indices", "actions", "timestamps"]).to_pylist()
    rows = random.Random(seed).sample(rows, min(queries_wanted, len(rows)))
    histories = [list(zip(r["item_indices"], r["actions"], r["timestamps"], strict=True)) for r in rows]
    queries = np.concatenate([catalog.encode(histories[i : i + 64]) for i in range(0, len(histories), 64)])
    vectors = retriever.item_vectors[1:].numpy()
    started = time.perf_counter()
    exact, _ = build_index(vectors, len(vectors), settings.serve.hnsw_m, settings.serve.hnsw_ef_search)
    exact_build = time.perf_counter() - started
    started = time.perf_counter()
    graph, kind = build_index(vectors, 0, settings.serve.hnsw_m, settings.serve.hnsw_ef_search)
    hnsw_build = time.perf_counter() - started
    assert kind == "hnsw"
    k = 100
    _, truth = exact.search(queries, k)
    exact_ms = single_query_ms(exact, queries, k)
    table = []
    for ef in sorted({*ef_values, settings.serve.hnsw_ef_search}):
        graph.hnsw.efSearch = ef
        _, found = graph.search(queries, k)
        recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(found, truth, strict=True)])
        table.append({"ef_search": ef, "recall_at_100": round(float(recall), 4), **single_query_ms(graph, queries, k),
                      "default": ef == settings.serve.hnsw_ef_search})  # fmt: skip
        log(f"  efSearch {ef}: recall@100 {table[-1]['recall_at_100']}, {table[-1]['p50_ms']} ms/query")
    return {
        "items": items,
        "queries": len(queries),
        "query_source": "Catalog.encode of real user histories (features/user_sequences at the trained version)",
        "hnsw_m": settings.serve.hnsw_m,
        "ef_construction": graph.hnsw.efConstruction,
        "note": "faiss searches with max(efSearch, k) candidates, so efSearch below 100 acts as 100 for k=100",
        "faiss_threads": faiss.omp_get_max_threads(),
        "exact_build_s": round(exact_build, 2),
        "hnsw_build_s": round(hnsw_build, 2),
        "exact_single_query": exact_ms,
        "by_ef_search": table,
    }


def single_query_ms(index: Any, queries: np.ndarray, k: int) -> dict[str, float]:
    """Per-query time of one-at-a-time searches (as a lone request would search)."""
    times = []
    for row in range(len(queries)):
        started = time.perf_counter()
        index.search(queries[row : row + 1], k)
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 3), "p99_ms": round(float(np.percentile(times, 99)), 3)}


# Main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 10k items, short runs, small pipeline")
    parser.add_argument("--sizes", type=int, nargs="+", help="catalogue sizes (items)")
    parser.add_argument("--users", type=int)
    parser.add_argument("--items", type=int, help="items of the synthetic event model")
    parser.add_argument("--events", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--duration", type=float, help="seconds of each load measurement")
    parser.add_argument("--search-duration", type=float, help="seconds of each step of the no-op rate search")
    parser.add_argument("--noop-rates", type=float, nargs="+", help="stepped rates of the no-op search")
    parser.add_argument("--low-rate", type=float, default=10.0, help="a light rate measured at each size too")
    parser.add_argument("--low-duration", type=float, help="seconds of each light-rate measurement")
    parser.add_argument("--hold-p99-ms", type=float, default=250.0, help="p99 a held rate stays under")
    parser.add_argument("--freshness-users", type=int)
    parser.add_argument("--poll-ms", type=float, default=20.0, help="freshness: /recommend poll interval")
    parser.add_argument("--recall-queries", type=int)
    parser.add_argument("--faiss-threads", type=int, default=1, help="OpenMP threads of the offline recall runs")
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--swap-duration", type=float, help="seconds of the load run the promotion happens in")
    parser.add_argument("--knee-pairs", type=int, help="no-op + /recommend pairs at the top rate (--extras-at size)")
    parser.add_argument("--extras-at", type=int, default=100_000, help="size for freshness and swap under load")
    parser.add_argument("--noise", type=float, default=0.5, help="bench rows: noise x row norm / sqrt(dim)")
    parser.add_argument("--exact-max-items", type=int, help="serve_exact_max_items override")
    parser.add_argument("--ingresses", nargs="+", choices=["haproxy", "python"], default=["haproxy", "python"],
                        help="serve ingresses: the first runs every phase, then each one's capacity")  # fmt: skip
    parser.add_argument("--capacity-rates", type=float, nargs="+", help="stepped rates of the capacity ladders")
    parser.add_argument("--capacity-p99-ms", type=float, default=1000.0, help="p99 a held rate stays under (capacity)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = with_preset(parser.parse_args(), QUICK, FULL)
    args.sizes = sorted(set(args.sizes))
    return args


def main() -> None:
    run_in_private_home("serve", parse_args(), run, print_summary)


def run(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """Every phase on a private cluster in ``home``; the result, written to ``args.out``."""
    started = time.perf_counter()
    load_start = loads()
    settings = settings_for(home, args)
    result: dict[str, Any] = {
        **header("serve", args, seeds=[args.seed]),
        "settings": {key: value for key, value in settings.flat_dump(mode="json").items() if key.startswith("serve_")},
        "catalogue": {
            "bench_items": "features/item_vocab rows 'bench-<index>' appended after the real items (same schema, "
            "same build record); their item rows are perturbed copies of trained rows: the row of a random real "
            f"item + N(0, ({args.noise} * row norm / sqrt(dim))^2) per coordinate, so the catalogue keeps the "
            "cluster structure of real embeddings (each real item gets a neighbourhood of near copies) rather "
            "than uniform random vectors",
        },
    }
    extras_at = max([size for size in args.sizes if size <= args.extras_at], default=args.sizes[0])
    try:
        result["pipeline"] = pipeline(settings, args)
        users = result["pipeline"].pop("known_users")
        with phase("no-op max rate"):
            noop = noop_max_rate(settings, args, users)
        result["noop_max_rate"] = noop
        top = float(noop["max_rate"] or args.noop_rates[0])
        rates = sorted({top, float(round(top / 2)), float(args.low_rate)}, reverse=True)
        catalogues = Catalogues(settings, result["pipeline"]["train"]["model_version"], max(args.sizes),
                                args.noise, args.seed)  # fmt: skip
        result["catalogue"]["real_items"] = catalogues.real_items
        scratch = home / "catalogues"
        result["sizes"] = []
        for size in args.sizes:
            with phase(f"catalogue {size:,}: register and swap") as record:
                version, run_id, steps = catalogues.register(size, scratch)
                swap = promote_and_wait(settings, version, timeout_s=1_800)
                record.update(swap)
            if "replica_process" not in result:
                result["replica_process"] = METER[0].process_facts("replica Recommender")
            memory = {name: mb for name, mb in CpuMeter.rss_mb(METER[0].snapshot()).items() if "replica" in name}
            entry: dict[str, Any] = {**swap, "run_id": run_id, "register_steps_s": steps, "rss_mb": memory}
            log(f"  {size:,} items: {swap['index']}, swap {swap['swap_load_and_index_s']} s")
            with phase(f"catalogue {size:,}: load"):
                entry["load"] = size_load(settings, args, users, rates)
            result["sizes"].append(entry)
            if size == extras_at:
                with phase(f"knee pairs at {size:,} items"):
                    held = [step["target_qps"] for step in noop["steps"] if step["holds"]]
                    entry["knee"] = knee_studies(settings, args, users, entry["load"], held or [top])
                with phase(f"freshness at {size:,} items"):
                    result["freshness"] = {"items": size, **freshness(settings, users, args.freshness_users,
                                                                       args.poll_ms, args.seed)}  # fmt: skip
                log(f"  freshness: {json.dumps({k: result['freshness'][k] for k in ('p50_s', 'p95_s', 'max_s')})}")
                with phase(f"swap under load at {size:,} items"):
                    rate = swap_rate(entry["load"], args.low_rate, args.hold_p99_ms)
                    result["swap_under_load"] = {"items": size, **swap_under_load(
                        settings, users, rate, args.swap_duration, version, promote_after_s=5.0)}  # fmt: skip
                log(f"  swap under load: {result['swap_under_load']['failed_requests']} failed, first new answer "
                    f"{result['swap_under_load']['promote_to_first_new_response_s']} s after promote")  # fmt: skip
        with phase(f"hnsw recall at {max(args.sizes):,} items"):
            result["hnsw_recall"] = hnsw_recall(
                settings,
                catalogues,
                max(args.sizes),
                args.recall_queries,
                args.ef_search,
                args.seed,
                args.faiss_threads,
            )
        with phase("ingresses"):
            result["ingresses"] = {"items": result["sizes"][-1]["items"], **ingress_comparison(settings, args, users)}
    finally:
        shutdown(settings)
    result["phases"] = PHASES
    result["machine"]["load_average_1_5_15_min"] = {"start": load_start, "end": loads()}
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["targets"] = TARGETS
    result["met"] = verdicts(result)
    write_result(args.out, result)
    return result


def median_p99_ratio(pairs: list[dict[str, Any]]) -> float | None:
    """The median p99 ratio of the pairs where the no-op held the rate; a pair where /recommend
    fell behind counts as infinitely slow. None when fewer than half the pairs count: a ratio of
    two saturated queues says nothing."""
    counted = [pair for pair in pairs if pair["noop_holds"]]
    if not counted or 2 * len(counted) < len(pairs):
        return None
    ratios = [pair["p99_ratio"] if pair["recommend_keeps_up"] else math.inf for pair in counted]
    return statistics.median(ratios)


def swap_rate(rows: list[dict[str, Any]], low_rate: float, hold_p99_ms: float) -> float:
    """The rate of the promotion under load: the highest at which /recommend held (kept up with
    no error, p99 under the hold limit), so a failed request is the swap's, not overload's."""
    held = [row["rate"] for row in rows if row["endpoint"] == "/recommend" and holds(row, hold_p99_ms)]
    return max(held, default=low_rate)


def p99_verdict(pairs: list[dict[str, Any]]) -> bool | None:
    """/recommend p99 <= 2x the no-op's at the top rate: the median ratio of the side-by-side pairs."""
    median = median_p99_ratio(pairs)
    return None if median is None else median <= TARGETS["recommend_p99_over_noop_at_100k_items_max_rate"]


def verdicts(result: dict[str, Any]) -> dict[str, bool | None]:
    at_100k = next((entry for entry in result["sizes"] if entry["items"] == 100_000), None)
    studies = [] if at_100k is None else at_100k.get("knee", [])
    measured = next((study for study in studies if study["median_p99_ratio"] is not None), None)
    p99_met = None if measured is None else p99_verdict(measured["pairs"])
    default = next((row for row in result["hnsw_recall"]["by_ef_search"] if row["default"]), None)
    fresh = result.get("freshness", {}).get("p95_s")
    swap = result.get("swap_under_load", {}).get("failed_requests")
    return {
        "recommend_p99_over_noop_at_100k_items_max_rate": p99_met,
        "hnsw_recall_at_100_default_ef": None
        if default is None
        else default["recall_at_100"] >= TARGETS["hnsw_recall_at_100_default_ef"],
        "freshness_p95_s": None if fresh is None else fresh <= TARGETS["freshness_p95_s"],
        "swap_under_load_failed_requests": None if swap is None else swap <= TARGETS["swap_under_load_failed_requests"],
    }


def print_summary(result: dict[str, Any]) -> None:
    line: Callable[..., None] = print
    line("\nno-op max rate:", result["noop_max_rate"]["max_rate"], "/s")
    header = f"{'items':>9} {'index':>6} {'swap s':>7} {'endpoint':<11}{'rate':>6} {'qps':>6} {'p50':>7} {'p95':>7} "
    line(header + f"{'p99':>7} {'err':>5} {'noop p99':>9} {'ratio':>6} {'CPU ms/req':>10} {'cores ours/all':>14}")
    for entry in result["sizes"]:
        for row in entry["load"]:
            line(
                f"{entry['items']:>9,} {entry['index']:>6} {entry['swap_load_and_index_s']:>7} {row['endpoint']:<11}"
                f"{row['rate']:>6g} {row['achieved_qps']:>6.0f} {row['p50_ms']!s:>7} {row['p95_ms']!s:>7} "
                f"{row['p99_ms']!s:>7} {row['errors']:>5} {row['noop_p99_ms']!s:>9} {row['p99_over_noop']!s:>6} "
                f"{row['cpu_ms_per_request_total']:>10} {row['our_busy_cores']:>7}/{row['machine_busy_cores']:<6}"
            )
    for entry in result["sizes"]:
        for knee in entry.get("knee", []):
            line(f"\n/recommend vs no-op at {knee['rate']:g}/s, {entry['items']:,} items, pairs side by side:")
            for pair in knee["pairs"]:
                line(f"  {pair['first']:<11} first: no-op p99 {pair['noop_p99_ms']} ms (holds {pair['noop_holds']}), "
                     f"/recommend p99 {pair['recommend_p99_ms']} ms (keeps up {pair['recommend_keeps_up']}), "
                     f"ratio {pair['p99_ratio']}")  # fmt: skip
            line(f"  median ratio {knee['median_p99_ratio']} (target <= "
                 f"{TARGETS['recommend_p99_over_noop_at_100k_items_max_rate']})")  # fmt: skip
    recall = result["hnsw_recall"]
    line(f"\nHNSW at {recall['items']:,} items (M={recall['hnsw_m']}, build {recall['hnsw_build_s']} s), "
         f"exact single query p50 {recall['exact_single_query']['p50_ms']} ms")  # fmt: skip
    for row in recall["by_ef_search"]:
        mark = " (default)" if row["default"] else ""
        line(f"  efSearch {row['ef_search']:>4}: recall@100 {row['recall_at_100']:.4f}, {row['p50_ms']} ms/query{mark}")
    fresh = result.get("freshness")
    if fresh:
        line(f"\nfreshness ({fresh['changed']}/{fresh['users']} users): p50 {fresh['p50_s']} s, "
             f"p95 {fresh['p95_s']} s, max {fresh['max_s']} s")  # fmt: skip
    swap = result.get("swap_under_load")
    if swap:
        line(
            f"swap under load at {swap['rate']:g}/s: {swap['failed_requests']} failed requests, first new answer "
            f"{swap['promote_to_first_new_response_s']} s after promote, "
            f"load+index {swap['swap_load_and_index_s']} s"
        )
    ingresses = result.get("ingresses")
    if ingresses:
        line(f"\ncapacity at {ingresses['items']:,} items ({ingresses['hold_rule']}):")
        for ingress, entry in ingresses["by_ingress"].items():
            line(f"  {ingress:<8} no-op {entry['no-op']['capacity']}/s, /recommend {entry['/recommend']['capacity']}/s")
        if "haproxy_over_python" in ingresses:
            line(f"  haproxy / python: {json.dumps(ingresses['haproxy_over_python'])}")
    line("\ntargets met:", json.dumps(result["met"]), f"\ntotal {result['seconds']} s")


if __name__ == "__main__":
    main()

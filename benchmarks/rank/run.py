"""Ranking benchmark: the target-aware ranker against the DLRM-style baseline (training speed and
test metrics per task over seeds), and /rank and /recommend = retrieve -> rank against
retrieval alone, on a private mini-cluster.

Starts its own broker, MLflow and Ray head (free ports, temporary home), then:

1. Pipeline: synthetic events with the funnel ground truth (docs/ranking.md) -> a topic ->
   ``run_ingest(until_idle=True)`` -> the feature build with features/ranking_examples -> a
   small HSTU retriever on Ray Train, registered, promoted and served (retrieval alone).
2. Quality and speed (``--seeds``): per seed the ranker and DLRM on the same examples, the
   same workers and epochs; train examples/s per epoch (mean of the epochs after the first,
   which pays the start-up) and test AUC / GAUC / logloss per task of the selected epoch's
   exported model; popularity once (it has no seed). Mean and std over seeds, and the
   ranker's lead over DLRM on click AUC per seed.
3. Latency (right after the first seed's runs): that ranker promoted and taken in by the
   replica; then at each ``--rates`` value, side by side in turns: retrieval alone (POST /retrieve with k 10 and
   exclude_seen, the work /recommend did before a ranker served), /recommend (retrieve
   ``serve_rank_candidates`` -> rank -> blend -> 10), and /rank with 200 candidates (each
   user's top 200 retrieved items, fetched beforehand). Open loop (benchmarks.common.loadgen),
   latency from the scheduled send; the CPU time per request of this run's processes.

    .venv/bin/python -m benchmarks.rank [--seeds 0 1 2] [--rates 10 25 50] [--quick]

Writes benchmarks/results/rank.json (``--out``) and prints a summary. Targets: the ranker's
click AUC (test) above DLRM's by >= 0.01; /recommend p99 <= 1.5x retrieval-alone p99.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import requests

from benchmarks.common import loadgen
from benchmarks.common.cpu import CpuMeter
from benchmarks.common.loadgen import keeps_up
from benchmarks.common.loadgen import summary_line as load_line
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
from features.tables import RANKING_TASKS
from infra import cluster
from infra.settings import Settings

RESULT = RESULTS / "rank.json"
TARGETS = {"ranker_test_auc_click_over_dlrm": 0.01, "recommend_p99_over_retrieval_alone": 1.5}
FULL = dict(users=300, items=400, events=40_000, seeds=[0, 1, 2], epochs=5, rates=[5.0, 10.0, 20.0], duration=20.0)
QUICK = dict(users=150, items=200, events=10_000, seeds=[0], epochs=1, rates=[10.0], duration=5.0)
RANK_CANDIDATES = 200


METER: list[CpuMeter] = []  # set once the cluster is up


def settings_for(home: Path, args: argparse.Namespace) -> Settings:
    """The private cluster's settings, with names of this benchmark's own."""
    return private_settings(
        home,
        STREAMREC_TOPIC="bench-rank",
        STREAMREC_REGISTERED_MODEL="bench-rank-retrieval",
        STREAMREC_REGISTERED_RANKING_MODEL="bench-rank-ranking",
        STREAMREC_MLFLOW_EXPERIMENT="bench-rank",
        STREAMREC_TRAIN_WORKERS=str(args.workers),
    )


def pipeline(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Funnel events -> Kafka -> ingest -> features (ranking examples too) -> HSTU served alone."""
    from features.build import build
    from features.ranking import RankingSpec
    from ingestion.producer import encode_event, produce
    from ingestion.stream import run_ingest
    from ingestion.synthetic import SyntheticConfig, generate_events
    from serving.deploy import deploy
    from serving.registry import promote
    from training.common.config import EncoderConfig
    from training.retrieval.config import TrainConfig
    from training.retrieval.runner import train

    with phase("cluster up"):
        cluster.up(settings, ["kafka", "mlflow", "ray"])
        METER.append(CpuMeter(settings))
    synthetic = SyntheticConfig(users=args.users, items=args.items, events=args.events, clusters=20, seed=0,
                                funnel=True)  # fmt: skip
    with phase("produce"):
        events = list(generate_events(synthetic))
        produce((encode_event(e) for e in events), settings, total=len(events), show_progress=False)
    with phase("ingest (until idle)"):
        run_ingest(settings, until_idle=True, report=lambda *_: None)
    with phase("features build (ranking examples too)"):
        build(settings, incremental=True, log=lambda *_: None, ranking=RankingSpec())
    config = TrainConfig(encoder=EncoderConfig(kind="hstu", dim=32, max_len=50), epochs=2, patience=0)
    with phase("train the retriever"):
        run = train(settings, config, workers=args.workers, log=lambda *_: None)
    with phase("deploy (retrieval alone)"):
        promote(settings, run.model_version)
        deploy(settings)
    return {
        "synthetic": {"users": args.users, "items": args.items, "events": args.events, "funnel": True},
        "retriever_version": run.model_version,
        "known_users": sorted({event["user_id"] for event in events}),
    }


# Quality and speed ------------------------------------------------------------------------


def train_pair(settings: Settings, args: argparse.Namespace, seed: int) -> dict[str, dict[str, Any]]:
    """The ranker and DLRM of one seed on the same examples, workers and epochs."""
    from training.ranking.config import RankerConfig, RankingTrainConfig
    from training.ranking.runner import train_ranking

    pair = {}
    for kind in ("ranker", "dlrm"):
        config = RankingTrainConfig(model=RankerConfig(kind=kind), epochs=args.epochs, patience=0, seed=seed)
        with phase(f"train {kind} seed {seed}"):
            outcome = train_ranking(settings, config, workers=args.workers, log=lambda *_: None)
        speeds = [epoch["train_examples_per_s"] for epoch in outcome.history]
        pair[kind] = {
            "seed": seed,
            "model_version": outcome.model_version,
            "best_epoch": outcome.best_epoch,
            "train_examples_per_s": round(statistics.mean(speeds[1:] or speeds), 1),
            "train_examples_per_s_by_epoch": [round(value, 1) for value in speeds],
            "metrics": {key: round(value, 4) for key, value in outcome.metrics.items()
                        if key.startswith(("test_", "best_val_"))},
        }  # fmt: skip
        log(f"  {kind} seed {seed}: test AUC click {outcome.metrics['test_auc_click']:.4f}, "
            f"{pair[kind]['train_examples_per_s']:.0f} examples/s")  # fmt: skip
    return pair


def quality(settings: Settings, args: argparse.Namespace, pairs: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The seeds' runs side by side: mean and std per metric, the ranker's lead, speeds; popularity once."""
    from training.ranking.config import RankingTrainConfig
    from training.ranking.runner import train_ranking_popularity

    runs = {kind: [pair[kind] for pair in pairs] for kind in ("ranker", "dlrm")}
    with phase("popularity"):
        popularity = train_ranking_popularity(settings, RankingTrainConfig(), log=lambda *_: None)
    table = {kind: summarise([run["metrics"] for run in rows]) for kind, rows in runs.items()}
    table["popularity"] = {key: {"mean": round(value, 4), "std": 0.0, "n": 1} for key, value in popularity.items()
                           if key.startswith("test_")}  # fmt: skip

    def leads(metric: str) -> list[float]:
        pairs_by_seed = zip(runs["ranker"], runs["dlrm"], strict=True)
        return [round(r["metrics"][metric] - d["metrics"][metric], 4) for r, d in pairs_by_seed]

    speed = {
        kind: round(statistics.mean(run["train_examples_per_s"] for run in rows), 1) for kind, rows in runs.items()
    }
    return {
        "workers": args.workers,
        "epochs": args.epochs,
        "seeds": [pair["ranker"]["seed"] for pair in pairs],
        "runs": runs,
        "summary": table,
        "ranker_test_auc_click_lead_over_dlrm_by_seed": leads("test_auc_click"),
        "ranker_test_auc_click_lead_over_dlrm_mean": round(statistics.mean(leads("test_auc_click")), 4),
        "ranker_val_auc_click_lead_over_dlrm_by_seed": leads("best_val_auc_click"),
        "ranker_val_auc_click_lead_over_dlrm_mean": round(statistics.mean(leads("best_val_auc_click")), 4),
        "train_examples_per_s": speed,
        "ranker_speed_over_dlrm": round(speed["ranker"] / speed["dlrm"], 3),
    }


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """mean / std / n of every metric over the seeds."""
    out = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        out[key] = {"mean": round(statistics.mean(values), 4), "std": round(std, 4), "n": len(values)}
    return out


# Latency ----------------------------------------------------------------------------------


def base(settings: Settings) -> str:
    from serving.deploy import base_url

    return base_url(settings)


def promote_ranker(settings: Settings, version: str, timeout_s: float = 300.0) -> float:
    """Promote the ranking version; seconds until /healthz shows it served."""
    from serving.registry import promote

    started = time.perf_counter()
    promote(settings, version, model=settings.mlflow.registered_ranking_model)
    while time.perf_counter() - started < timeout_s:
        ranking = requests.get(f"{base(settings)}/healthz", timeout=30).json().get("ranking") or {}
        if str(ranking.get("version")) == version:
            return round(time.perf_counter() - started, 2)
        time.sleep(0.5)
    raise RuntimeError(f"ranking version {version} was not served within {timeout_s:.0f} s")


def request_bodies(settings: Settings, users: list[str], seed: int) -> dict[str, list[bytes]]:
    """Bodies of the three measured endpoints for the same random users."""
    rng = random.Random(seed)
    chosen = [rng.choice(users) for _ in range(512)]
    session = requests.Session()
    pools: dict[str, list[str]] = {}
    for user in set(chosen):
        found = session.post(f"{base(settings)}/retrieve", json={"user_id": user, "k": RANK_CANDIDATES}, timeout=30)
        pools[user] = [item["item_id"] for item in found.json()["items"]]
    return {
        "retrieval alone": [json.dumps({"user_id": u, "k": 10, "exclude_seen": True}).encode() for u in chosen],
        "/recommend": [json.dumps({"user_id": u, "k": 10}).encode() for u in chosen],
        "/rank 200": [json.dumps({"user_id": u, "candidates": pools[u]}).encode() for u in chosen],
    }


PATHS = {"retrieval alone": "/retrieve", "/recommend": "/recommend", "/rank 200": "/rank"}


def latency(settings: Settings, args: argparse.Namespace, users: list[str]) -> list[dict[str, Any]]:
    """At each rate the three endpoints in turns, retrieval alone first."""
    bodies = request_bodies(settings, users, args.seed)
    for name in PATHS:  # warm-up
        run_load(settings, name, bodies[name], args.rates[0], 3.0)
    rows = []
    for rate in args.rates:
        alone = None
        for name in PATHS:
            result = run_load(settings, name, bodies[name], rate, args.duration)
            if name == "retrieval alone":
                alone = result
            ratio = result["p99_ms"] / alone["p99_ms"] if alone and result["p99_ms"] and alone["p99_ms"] else None
            rows.append({"endpoint": name, "rate": rate, **result,
                         "p99_over_retrieval_alone": round(ratio, 2) if ratio else None})  # fmt: skip
            log(f"  {name:<16} at {rate:g}/s: {load_line(result)} p99/alone={rows[-1]['p99_over_retrieval_alone']}")
    return rows


def run_load(settings: Settings, name: str, bodies: list[bytes], rate: float, duration: float) -> dict[str, Any]:
    spec = loadgen.LoadSpec(url=f"{base(settings)}{PATHS[name]}", rate=rate, duration_s=duration, bodies=bodies)
    before = METER[0].snapshot()
    result = loadgen.run(spec)
    result.update(METER[0].usage(before, METER[0].snapshot(), result["scheduled"]))
    time.sleep(1.0)
    return result


# Main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: small data, one seed, one short rate")
    parser.add_argument("--users", type=int)
    parser.add_argument("--items", type=int)
    parser.add_argument("--events", type=int)
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--epochs", type=int, help="epochs of both ranking models")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers of both ranking models")
    parser.add_argument("--rates", type=float, nargs="+", help="open-loop request rates")
    parser.add_argument("--duration", type=float, help="seconds of each load measurement")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = with_preset(parser.parse_args(), QUICK, FULL)
    return args


def main() -> None:
    run_in_private_home("rank", parse_args(), run, print_summary)


def run(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """Pipeline, models and latency on a private cluster in ``home``; the result, written to ``args.out``."""
    started = time.perf_counter()
    load_start = loads()
    settings = settings_for(home, args)
    result: dict[str, Any] = {
        # Seed 0 makes the funnel events; ranker and DLRM train once per seed of --seeds; --seed picks the requests.
        **header("rank", args, seeds=sorted({0, args.seed, *args.seeds})),
        "tasks": list(RANKING_TASKS),
        "settings": {
            key: value
            for key, value in settings.flat_dump(mode="json").items()
            if key.startswith("serve_") or key == "registered_ranking_model"
        },  # fmt: skip
    }
    try:
        result["pipeline"] = pipeline(settings, args)
        users = result["pipeline"].pop("known_users")
        # The first seed's models, then latency with its ranker (before the other seeds' training
        # runs leave their Ray actors on the cores), then the other seeds.
        pairs = [train_pair(settings, args, args.seeds[0])]
        with phase("promote the ranker"):
            result["ranker_promote_to_served_s"] = promote_ranker(settings, pairs[0]["ranker"]["model_version"])
        with phase("latency"):
            result["latency"] = latency(settings, args, users)
        pairs += [train_pair(settings, args, seed) for seed in args.seeds[1:]]
        result["quality"] = quality(settings, args, pairs)
    finally:
        shutdown(settings)
    result["phases"] = PHASES
    result["machine"]["load_average_1_5_15_min"] = {"start": load_start, "end": loads()}
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["targets"] = TARGETS
    result["met"] = verdicts(result)
    write_result(args.out, result)
    return result


def verdicts(result: dict[str, Any]) -> dict[str, bool | None]:
    lead = result["quality"]["ranker_test_auc_click_lead_over_dlrm_mean"]
    ranked = [row for row in result["latency"] if row["endpoint"] == "/recommend"]
    clean = [row for row in ranked if keeps_up(row)]
    top = max(clean, key=lambda row: row["rate"], default=None)
    return {
        "ranker_test_auc_click_over_dlrm": lead >= TARGETS["ranker_test_auc_click_over_dlrm"],
        "recommend_p99_over_retrieval_alone": None
        if top is None or top["p99_over_retrieval_alone"] is None
        else top["p99_over_retrieval_alone"] <= TARGETS["recommend_p99_over_retrieval_alone"],
    }


def print_summary(result: dict[str, Any]) -> None:
    quality = result["quality"]
    print(f"\nquality over seeds {quality['seeds']} ({quality['workers']} workers, {quality['epochs']} epochs), test:")
    print(f"{'model':<11}" + "".join(f"{'AUC ' + task:>15}" for task in result["tasks"]) + f"{'GAUC click':>15}")
    for kind, table in quality["summary"].items():
        cells = [table.get(f"test_auc_{task}") for task in result["tasks"]] + [table.get("test_gauc_click")]
        print(f"{kind:<11}" + "".join(f"{c['mean']:>8.4f}±{c['std']:.3f}" if c else f"{'':>15}" for c in cells))
    print(f"ranker lead on test click AUC per seed: {quality['ranker_test_auc_click_lead_over_dlrm_by_seed']}")
    print(f"train examples/s: {quality['train_examples_per_s']} (ranker/dlrm {quality['ranker_speed_over_dlrm']})")
    print("\nlatency (ms, open loop):")
    for row in result["latency"]:
        print(f"  {row['endpoint']:<16} {row['rate']:>5g}/s  achieved {row['achieved_qps']:>6}/s  p50 {row['p50_ms']}"
              f"  p99 {row['p99_ms']}  errors {row['errors']}  p99/alone {row['p99_over_retrieval_alone']}  "
              f"CPU ms/req {row['cpu_ms_per_request_total']}")  # fmt: skip
    print(f"\nmet: {result['met']}")


if __name__ == "__main__":
    main()

"""Training benchmark: throughput of Ray Train + DMP against a plain PyTorch loop, and quality.

On a private mini-cluster (MLflow + Ray head on free ports, temporary home), with the DESIGN
reference hyperparameters (dim 50, 2 blocks, 1 head, max_len 200, batch 128, 128 negatives):

1. Synthetic events (``ingestion.synthetic``) are written to silver/events and the real
   feature build (Spark) makes the feature tables; every run reads them through the reader.
2. For HSTU and SASRec, train sequences/s (the training steps of an epoch, after the first)
   * in the plain single-process loop (``plain_loop.py``: nn.Embedding, no Ray, no DMP), with
     as many torch threads as one Ray worker has CPUs;
   * with ``streamrec train`` on 1 and on 2 Ray Train workers (DMP, row-wise item table).
   The headline ratio is plain / Ray+DMP at 1 worker (per-sample overhead; target <= 1.3).
3. Quality: HSTU and SASRec trained on 2 workers (model selected on validation, early
   stopping) and the popularity baseline, HR@10 / NDCG@10 on the test split; the same on a
   dataset given with ``--dataset PATH --format sasrec|movielens`` (replayed as events into
   silver, then the feature build).

    .venv/bin/python benchmarks/train/run.py [--events 100000] [--dataset ml-1m/ratings.dat --format movielens]

Writes benchmarks/results/train.json and prints its path.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
from deltalake import write_deltalake  # noqa: E402

from benchmarks.train.plain_loop import plain_epochs  # noqa: E402
from features.build import build  # noqa: E402
from features.reader import latest_versions, load_examples  # noqa: E402
from infra import cluster  # noqa: E402
from infra.processes import free_port  # noqa: E402
from infra.settings import Settings, get_settings  # noqa: E402
from ingestion.schema import SILVER_SCHEMA, SILVER_TABLE  # noqa: E402
from ingestion.synthetic import SyntheticConfig, generate_events  # noqa: E402
from training.config import EncoderConfig, TrainConfig  # noqa: E402
from training.runner import train, train_popularity  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "train.json"
KINDS = ("hstu", "sasrec")
OVERHEAD_TARGET = 1.3


def write_silver(settings: Settings, events: Iterable[dict[str, Any]]) -> int:
    """Append contract events to silver/events (as ingestion would leave them); returns the count."""
    ingested = dt.datetime.now(dt.timezone.utc)
    rows = [
        {
            **{key: event.get(key) for key in ("event_id", "user_id", "item_id", "action", "ts", "dwell_ms", "surface")},
            "kafka_partition": zlib.crc32(event["user_id"].encode()) % 4,
            "kafka_offset": offset,
            "ingested_at": ingested,
            "event_date": dt.datetime.fromtimestamp(event["ts"] / 1000, dt.timezone.utc).date(),
        }
        for offset, event in enumerate(events)
    ]
    table = pa.Table.from_pylist(rows, schema=SILVER_SCHEMA).sort_by(
        [("user_id", "ascending"), ("ts", "ascending"), ("kafka_partition", "ascending"), ("kafka_offset", "ascending")]
    )
    write_deltalake(settings.table_uri(SILVER_TABLE), table, mode="append", partition_by=["event_date"])
    return len(rows)


def build_lake(settings: Settings, events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Silver from ``events``, then the real feature build; a summary of the examples."""
    started = time.perf_counter()
    count = write_silver(settings, events)
    build(settings, log=lambda message: None)
    train_split = load_examples(settings, "train", latest_versions(settings))
    return {
        "events": count,
        "users": len(train_split),
        "items": train_split.num_items,
        "mean_history": round(float(train_split.lengths.mean()), 1),
        "build_seconds": round(time.perf_counter() - started, 1),
    }


def steady_rate(rates: list[float]) -> float:
    """Median sequences/s of the epochs after the first (which warms caches up)."""
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def throughput(settings: Settings, config: TrainConfig, epochs: int) -> dict[str, float]:
    """Plain loop vs Ray Train + DMP on 1 and 2 workers, same data and model."""
    speed = config.model_copy(update={"epochs": epochs, "patience": 0})
    examples = load_examples(settings, "train", latest_versions(settings), max_len=config.encoder.max_len)
    plain = steady_rate(plain_epochs(speed, examples, epochs, threads=max(1, int(settings.train_cpus_per_worker))))
    ray = {}
    for workers in (1, 2):
        run = train(settings, speed, workers=workers)
        ray[workers] = steady_rate([row["train_sequences_per_s"] for row in run.history])
    return {
        "plain_loop_seq_per_s": round(plain, 1),
        "ray_dmp_1_worker_seq_per_s": round(ray[1], 1),
        "ray_dmp_2_workers_seq_per_s": round(ray[2], 1),
        "overhead_ratio_1_worker": round(plain / ray[1], 3),
        "overhead_target": OVERHEAD_TARGET,
        "meets_target": plain / ray[1] <= OVERHEAD_TARGET,
        "speedup_2_workers": round(ray[2] / ray[1], 3),
    }


def quality(settings: Settings, epochs: int, patience: int) -> dict[str, dict[str, float]]:
    """Test HR/NDCG@10 (and the rest) of HSTU, SASRec (2 workers) and popularity."""
    table: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        run = train(settings, TrainConfig(encoder=EncoderConfig(kind=kind), epochs=epochs, patience=patience), workers=2)
        table[kind] = {key: round(value, 4) for key, value in run.metrics.items() if key.startswith("test_")}
        table[kind]["best_epoch"] = run.best_epoch
    popularity = train_popularity(settings, TrainConfig())
    table["popularity"] = {key: round(value, 4) for key, value in popularity.items() if key.startswith("test_")}
    return table


def print_quality(name: str, table: dict[str, dict[str, float]]) -> None:
    print(f"\n{name}: test metrics (full catalogue, seen items filtered)")
    print(f"{'model':<12}{'HR@10':>8}{'NDCG@10':>9}{'HR@50':>8}{'MRR':>8}")
    for model, metrics in table.items():
        hr10, ndcg10, hr50, mrr = (metrics[f"test_{key}"] for key in ("hr_10", "ndcg_10", "hr_50", "mrr"))
        print(f"{model:<12}{hr10:>8.4f}{ndcg10:>9.4f}{hr50:>8.4f}{mrr:>8.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--speed-epochs", type=int, default=4, help="epochs per throughput run (the first is not timed)")
    parser.add_argument("--quality-epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--dataset", type=Path, help="an extra dataset for the quality table")
    parser.add_argument("--format", choices=("sasrec", "movielens", "csv"), default="sasrec")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="streamrec-train-bench-"))
    settings = get_settings(
        home=home,
        lake_uri="",
        external=[],
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",
        ray_address=f"127.0.0.1:{free_port()}",
        ray_dashboard_port=free_port(),
        ray_client_port=free_port(),
        train_storage="",
    )
    started = time.perf_counter()
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "hyperparameters": TrainConfig().model_dump(mode="json"),
    }
    try:
        cluster.up(settings, ["mlflow", "ray"])
        synthetic = SyntheticConfig(users=args.users, items=args.items, events=args.events, seed=0)
        print(f"synthetic data: {synthetic.users} users, {synthetic.items} items, {synthetic.events} events", flush=True)
        result["synthetic_data"] = build_lake(settings, generate_events(synthetic))
        result["throughput"] = {
            kind: throughput(settings, TrainConfig(encoder=EncoderConfig(kind=kind)), args.speed_epochs) for kind in KINDS
        }
        result["quality"] = {"synthetic": quality(settings, args.quality_epochs, args.patience)}
        if args.dataset:
            from ingestion.replay import read_replay, replay_events

            dataset = settings.model_copy(update={"home": home / "dataset"})
            frame = read_replay(args.dataset, args.format)
            result["dataset"] = {"path": str(args.dataset), "format": args.format,
                                 **build_lake(dataset, replay_events(frame))}  # fmt: skip
            result["quality"][args.dataset.name] = quality(dataset, args.quality_epochs, args.patience)
    finally:
        import ray

        ray.shutdown()
        cluster.down(settings, ["mlflow", "ray"])
        shutil.rmtree(home, ignore_errors=True)
    synthetic_quality = result["quality"]["synthetic"]
    hstu_ndcg, sasrec_ndcg = (synthetic_quality[kind]["test_ndcg_10"] for kind in KINDS)
    result["hstu_ndcg_10_at_least_sasrec"] = hstu_ndcg >= sasrec_ndcg
    result["seconds"] = round(time.perf_counter() - started, 1)

    print("\nthroughput (train sequences/s; overhead = plain loop / Ray+DMP at 1 worker)")
    for kind, figures in result["throughput"].items():
        print(f"{kind:<8}{json.dumps(figures)}")
    for name, table in result["quality"].items():
        print_quality(name, table)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresults: {RESULT}")


if __name__ == "__main__":
    main()

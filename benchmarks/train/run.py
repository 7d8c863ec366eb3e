"""Training benchmark: throughput of Ray Train + DMP against a plain PyTorch loop, and quality.

On a private mini-cluster (MLflow + Ray head on free ports, temporary home), with the DESIGN
reference hyperparameters (dim 50, 2 blocks, 1 head, max_len 200, batch 128, 128 negatives):

1. Synthetic events (``ingestion.synthetic``) are written to silver/events and the real
   feature build (Spark) makes the feature tables; every run reads them through the reader.
2. For HSTU and SASRec, train sequences/s (the training steps of an epoch, after the first)
   * in the plain single-process loop (``benchmarks.train.plain_loop``: nn.Embedding, no Ray, no DMP), with
     as many torch threads as one Ray worker has CPUs;
   * with ``streamrec train`` on 1 worker without and with length bucketing (same data, same
     run: the speed-up of grouping batches by length), and on 2 workers with it.
   The headline ratio is plain / Ray+DMP at 1 worker (per-sample overhead; target <= 1.3).
3. Quality: HSTU and SASRec trained on 2 workers for each of ``--seeds`` (model selected on
   validation, early stopping) and the popularity baseline: test metrics under both
   protocols (seen items filtered, all items), mean and standard deviation, and whether HSTU
   beats SASRec beyond one standard deviation; the same on a dataset given with
   ``--dataset PATH --format sasrec|movielens`` (replayed as events into silver, then the
   feature build). The JSON records the hyperparameters that ran (the resolved item-table
   optimizer included) and the arguments.

    .venv/bin/python -m benchmarks.train [--events 100000] [--dataset ml-1m/ratings.dat --format movielens]

Writes benchmarks/results/train.json (``--out``) and prints its path.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from benchmarks.harness import RESULTS, header, private_home, private_settings, shutdown, write_result
from benchmarks.train.plain_loop import plain_epochs
from features.build import build
from features.reader import latest_versions, load_examples
from infra import cluster
from infra.settings import Settings
from ingestion.lake_writer import append_silver
from ingestion.replay import ReplayFormat
from ingestion.schema import SILVER_SCHEMA, SILVER_TABLE
from ingestion.synthetic import SyntheticConfig, generate_events
from training.common.config import EncoderConfig
from training.retrieval.config import TrainConfig
from training.retrieval.popularity import train_popularity
from training.retrieval.runner import train

RESULT = RESULTS / "train.json"
KINDS = ("hstu", "sasrec")
OVERHEAD_TARGET = 1.3


def write_silver(settings: Settings, events: Iterable[dict[str, Any]]) -> int:
    """Append contract events to silver/events (as ingestion would leave them); returns the count."""
    ingested = dt.datetime.now(dt.UTC)
    fields = ("event_id", "user_id", "item_id", "action", "ts", "dwell_ms", "surface")
    rows = [
        {
            **{key: event.get(key) for key in fields},
            "kafka_partition": zlib.crc32(event["user_id"].encode()) % 4,
            "kafka_offset": offset,
            "ingested_at": ingested,
            "event_date": dt.datetime.fromtimestamp(event["ts"] / 1000, dt.UTC).date(),
        }
        for offset, event in enumerate(events)
    ]
    append_silver(settings.table_uri(SILVER_TABLE), pa.Table.from_pylist(rows, schema=SILVER_SCHEMA))
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


def quality_events(dataset: Path | None, data_format: ReplayFormat, synthetic_events: int) -> Iterable[dict[str, Any]]:
    """The events of a quality benchmark: the replay file ``dataset`` (in ``data_format``), or
    without one a synthetic stream of ``synthetic_events`` (1,000 users, 2,000 items, seed 0)."""
    if dataset:
        from ingestion.replay import read_replay, replay_events

        return replay_events(read_replay(dataset, data_format))
    return generate_events(SyntheticConfig(users=1_000, items=2_000, events=synthetic_events, seed=0))


def quality_lake(
    settings: Settings, dataset: Path | None, data_format: ReplayFormat, synthetic_events: int, name: str
) -> dict[str, Any]:
    """MLflow and Ray of ``settings`` up, and the lake built from ``quality_events``; the data's
    summary (printed, and for the result file)."""
    cluster.up(settings, ["mlflow", "ray"])
    data = {"name": name, **build_lake(settings, quality_events(dataset, data_format, synthetic_events))}
    print(f"data: {json.dumps(data)}", flush=True)
    return data


def steady_rate(rates: list[float]) -> float:
    """Median sequences/s of the epochs after the first (which warms caches up)."""
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def throughput(settings: Settings, config: TrainConfig, epochs: int) -> dict[str, Any]:
    """Plain loop vs Ray Train + DMP, and length bucketing off vs on; same data and model."""
    speed = config.model_copy(update={"epochs": epochs, "patience": 0})
    unbucketed = speed.model_copy(update={"length_bucketing": False})
    examples = load_examples(settings, "train", latest_versions(settings), max_len=config.encoder.max_len)
    threads = max(1, int(settings.train.cpus_per_worker))
    plain = steady_rate(plain_epochs(speed, examples, epochs, threads=threads))
    ray = {}
    for name, run_config, workers in (("1_worker_unbucketed", unbucketed, 1), ("1_worker", speed, 1),
                                      ("2_workers", speed, 2)):  # fmt: skip
        run = train(settings, run_config, workers=workers)
        ray[name] = steady_rate([row["train_sequences_per_s"] for row in run.history])
    return {
        "plain_loop_seq_per_s": round(plain, 1),
        "ray_dmp_1_worker_unbucketed_seq_per_s": round(ray["1_worker_unbucketed"], 1),
        "ray_dmp_1_worker_seq_per_s": round(ray["1_worker"], 1),
        "ray_dmp_2_workers_seq_per_s": round(ray["2_workers"], 1),
        "bucketing_speedup_1_worker": round(ray["1_worker"] / ray["1_worker_unbucketed"], 3),
        "overhead_ratio_1_worker": round(plain / ray["1_worker"], 3),
        "overhead_target": OVERHEAD_TARGET,
        "meets_target": plain / ray["1_worker"] <= OVERHEAD_TARGET,
        "speedup_2_workers": round(ray["2_workers"] / ray["1_worker"], 3),
    }


QUALITY_KEYS = ("hr_10", "ndcg_10", "hr_50", "mrr")
PROTOCOL_PREFIXES = {"seen_filtered": "test_", "all_items": "test_all_"}


def quality(settings: Settings, epochs: int, patience: int, seeds: list[int]) -> dict[str, Any]:
    """Test metrics of HSTU and SASRec (2 workers) over ``seeds``, and popularity: per seed,
    mean and standard deviation, both protocols; selection on validation, test read once."""
    table: dict[str, Any] = {}
    for kind in KINDS:
        runs = []
        for seed in seeds:
            config = TrainConfig(encoder=EncoderConfig(kind=kind), epochs=epochs, patience=patience, seed=seed)
            run = train(settings, config, workers=2)
            runs.append({"seed": seed, "best_epoch": run.best_epoch, **{k: v for k, v in run.metrics.items()
                                                                         if k.startswith("test_")}})  # fmt: skip
        table[kind] = {"runs": runs, **summary(runs)}
    popularity = train_popularity(settings, TrainConfig())
    table["popularity"] = {"runs": [popularity], **summary([popularity])}
    return table


def summary(runs: list[dict[str, float]]) -> dict[str, dict[str, dict[str, float]]]:
    """{protocol: {metric: {mean, std}}} over runs (std 0 for one run)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for protocol, prefix in PROTOCOL_PREFIXES.items():
        out[protocol] = {}
        for key in QUALITY_KEYS:
            values = [run[prefix + key] for run in runs]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            out[protocol][key] = {"mean": round(statistics.fmean(values), 4), "std": round(std, 4)}
    out["repeat_target_share"] = {"value": {"mean": round(runs[0]["test_repeat_target_share"], 4), "std": 0.0}}
    return out


def comparison(table: dict[str, Any]) -> dict[str, Any]:
    """Whether HSTU beats SASRec beyond one standard deviation (of either), per protocol, NDCG@10."""
    verdicts = {}
    for protocol in PROTOCOL_PREFIXES:
        hstu, sasrec = (table[kind][protocol]["ndcg_10"] for kind in KINDS)
        gap = hstu["mean"] - sasrec["mean"]
        verdicts[protocol] = {
            "hstu_minus_sasrec_ndcg_10": round(gap, 4),
            "beyond_one_std": abs(gap) > max(hstu["std"], sasrec["std"]),
            "winner": "hstu" if gap > 0 else "sasrec",
        }
    return verdicts


def print_quality(name: str, table: dict[str, Any]) -> None:
    print(f"\n{name}: test metrics, mean ± std over seeds (selection on validation)")
    print(f"{'model':<12}{'protocol':<15}" + "".join(f"{key:>18}" for key in QUALITY_KEYS))
    for model in (*KINDS, "popularity"):
        for protocol in PROTOCOL_PREFIXES:
            cells = [table[model][protocol][key] for key in QUALITY_KEYS]
            print(f"{model:<12}{protocol:<15}" + "".join(f"{c['mean']:>11.4f}±{c['std']:.4f}" for c in cells))
    print(f"repeated test targets: {table['hstu']['repeat_target_share']['value']['mean']:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument(
        "--speed-epochs", type=int, default=4, help="epochs per throughput run (the first is not timed)"
    )
    parser.add_argument("--quality-epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the quality table")
    parser.add_argument("--skip-throughput", action="store_true", help="only the quality table")
    parser.add_argument("--dataset", type=Path, help="an extra dataset for the quality table")
    parser.add_argument("--format", choices=("sasrec", "movielens", "csv"), default="sasrec")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    with private_home("train") as home:
        run(args, home, private_settings(home))


def run(args: argparse.Namespace, home: Path, settings: Settings) -> None:
    """Throughput and quality on the private cluster of ``settings``; writes ``args.out``."""
    started = time.perf_counter()
    result: dict[str, Any] = {
        # Seed 0 makes the synthetic events; the quality table trains once per seed of --seeds.
        **header("train", args, seeds=sorted({0, *args.seeds})),
        "hyperparameters": {
            **TrainConfig().model_dump(mode="json"),
            "resolved_table_optimizer": dict(
                zip(("name", "lr"), TrainConfig().table_optimizer(use_gpu=False), strict=True)
            ),
        },
    }
    try:
        cluster.up(settings, ["mlflow", "ray"])
        synthetic = SyntheticConfig(users=args.users, items=args.items, events=args.events, seed=0)
        print(
            f"synthetic data: {synthetic.users} users, {synthetic.items} items, {synthetic.events} events", flush=True
        )
        result["synthetic_data"] = build_lake(settings, generate_events(synthetic))
        if not args.skip_throughput:
            result["throughput"] = {
                kind: throughput(settings, TrainConfig(encoder=EncoderConfig(kind=kind)), args.speed_epochs)
                for kind in KINDS
            }
        result["quality"] = {"synthetic": quality(settings, args.quality_epochs, args.patience, args.seeds)}
        if args.dataset:
            from ingestion.replay import read_replay, replay_events

            dataset = settings.model_copy(update={"home": home / "dataset"})
            frame = read_replay(args.dataset, args.format)
            result["dataset"] = {"path": str(args.dataset), "format": args.format,
                                 **build_lake(dataset, replay_events(frame))}  # fmt: skip
            result["quality"][args.dataset.name] = quality(dataset, args.quality_epochs, args.patience, args.seeds)
    finally:
        shutdown(settings)
    result["hstu_vs_sasrec"] = {name: comparison(table) for name, table in result["quality"].items()}
    result["seconds"] = round(time.perf_counter() - started, 1)

    print("\nthroughput (train sequences/s; overhead = plain loop / Ray+DMP at 1 worker)")
    for kind, figures in result.get("throughput", {}).items():
        print(f"{kind:<8}{json.dumps(figures)}")
    for name, table in result["quality"].items():
        print_quality(name, table)
        print(f"HSTU vs SASRec (NDCG@10): {json.dumps(result['hstu_vs_sasrec'][name])}")
    write_result(args.out, result)
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()

"""HSTU faithfulness ablation: the reference implementation's choices, each alone and together.

On a private mini-cluster (MLflow + Ray head on free ports, temporary home), one dataset is
replayed into silver (``--dataset PATH --format sasrec``; synthetic events without it) and
the real feature build runs. Then, for each seed of ``--seeds``, on 2 Ray Train workers with
the same hyperparameters (model selected on validation, test read once):

* ``earlier``: HSTU as streamrec first built it (no absolute positions, uvqk bias,
  LayerNorm affines, PyTorch-default initialisation with zero relative biases);
* one variant per switch of ``EncoderConfig`` turned to the reference's choice alone
  (``positions``, ``no_uvqk_bias``, ``no_norm_affine``, ``reference_init``);
* ``reference``: all four together;
* ``sasrec``: the baseline HSTU is compared with.

Test NDCG@10 / HR@10 under both protocols, mean and std over seeds, and each variant's gap
to ``earlier`` and to ``sasrec`` with whether it exceeds one standard deviation.

    .venv/bin/python -m benchmarks.train.ablation --dataset ../shared/data/wikipedia.txt [--seeds 0 1 2]

Writes benchmarks/results/hstu_ablation_<dataset>.json (``--out``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS, header, private_home, private_settings, shutdown, write_result
from benchmarks.train.run import quality_lake
from infra.settings import Settings
from training.common.config import EncoderConfig
from training.retrieval.config import TrainConfig
from training.retrieval.runner import train

EARLIER = {
    "hstu_absolute_positions": False,
    "hstu_uvqk_bias": True,
    "hstu_norm_affine": True,
    "hstu_reference_init": False,
}
ONE_CHANGE = {
    "positions": {"hstu_absolute_positions": True},
    "no_uvqk_bias": {"hstu_uvqk_bias": False},
    "no_norm_affine": {"hstu_norm_affine": False},
    "reference_init": {"hstu_reference_init": True},
}
VARIANTS: dict[str, dict[str, Any]] = {  # in the order they run
    "earlier": {"kind": "hstu", **EARLIER},
    "reference": {"kind": "hstu", **{key: not value for key, value in EARLIER.items()}},
    "sasrec": {"kind": "sasrec"},
    **{name: {"kind": "hstu", **EARLIER, **change} for name, change in ONE_CHANGE.items()},
}
METRICS = ("test_ndcg_10", "test_hr_10", "test_all_ndcg_10", "test_all_hr_10")


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value), rounded."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 4), "std": round(std, 4)}


def gap(table: dict[str, Any], name: str, other: str, metric: str = "test_ndcg_10") -> dict[str, Any]:
    """``name`` minus ``other`` on ``metric``'s mean, and whether it exceeds either's std."""
    mine, theirs = table[name]["summary"][metric], table[other]["summary"][metric]
    difference = mine["mean"] - theirs["mean"]
    return {"gap": round(difference, 4), "beyond_one_std": abs(difference) > max(mine["std"], theirs["std"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, help="a dataset file (synthetic events without it)")
    parser.add_argument("--format", choices=("sasrec", "movielens", "csv"), default="sasrec")
    parser.add_argument("--events", type=int, default=100_000, help="synthetic events (without --dataset)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with private_home("ablation") as home:
        run(args, private_settings(home))


def run(args: argparse.Namespace, settings: Settings) -> None:
    """Every variant over every seed on the private cluster of ``settings``; writes the result file."""
    name = args.dataset.stem if args.dataset else "synthetic"
    out = args.out or RESULTS / f"hstu_ablation_{name}.json"
    started = time.perf_counter()
    # Seed 0 makes the synthetic events (without --dataset); each variant trains once per seed of --seeds.
    result: dict[str, Any] = {**header("hstu_ablation", args, seeds=sorted({0, *args.seeds})), "variants": VARIANTS}
    table: dict[str, Any] = {}
    try:
        result["data"] = quality_lake(settings, args.dataset, args.format, args.events, name)
        for variant in args.variants:
            encoder = EncoderConfig(max_len=args.max_len, dropout=args.dropout, **VARIANTS[variant])
            runs = []
            for seed in args.seeds:
                config = TrainConfig(encoder=encoder, epochs=args.epochs, patience=args.patience, seed=seed)
                run = train(settings, config, workers=2)
                runs.append({"seed": seed, "best_epoch": run.best_epoch, **{key: run.metrics[key] for key in METRICS}})
                print(f"{variant} seed {seed}: {json.dumps(runs[-1])}", flush=True)
            table[variant] = {"runs": runs, "summary": {key: mean_std([r[key] for r in runs]) for key in METRICS}}
            write_result(out, {**result, "table": table, "complete": False})  # a cut-short run keeps what it measured
    finally:
        shutdown(settings)
    result["table"] = table
    result["complete"] = True
    result["gaps_ndcg_10"] = {
        variant: {other: gap(table, variant, other) for other in ("earlier", "sasrec") if other in table}
        for variant in table
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(f"\n{name}: test metrics, mean ± std over seeds {args.seeds}")
    print(f"{'variant':<16}" + "".join(f"{key:>22}" for key in METRICS))
    for variant, row in table.items():
        cells = [row["summary"][key] for key in METRICS]
        print(f"{variant:<16}" + "".join(f"{cell['mean']:>15.4f}±{cell['std']:.4f}" for cell in cells))
    write_result(out, result)
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()

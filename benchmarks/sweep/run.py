"""Scaling-sweep benchmark: `streamrec sweep` on a private mini-cluster, its trials, fitted laws and plots.

On a private mini-cluster (MLflow + Ray head on free ports, temporary home), one dataset is
written to silver and the real feature build runs: a synthetic stream (``--users``, ``--items``,
``--events``) or a replay file (``--dataset PATH --format sasrec``, optionally its first
``--max-users`` users). Then the sweep the options name runs exactly as `streamrec sweep` runs
it (Ray Tune trials, each an ordinary training run, one MLflow parent run), and the result file
records the data, every trial's sizes and metrics, the fitted laws with their intervals and
held-out errors, what doubling the model or the data buys, and what it all cost.

    .venv/bin/python -m benchmarks.sweep                          # a tiny check: 4 trials, 3 epochs
    .venv/bin/python -m benchmarks.sweep --dataset ../shared/data/wikipedia.txt --dims 8,16,32,64 \\
        --blocks 1,2,4 --fractions 0.25,0.5,1 --epochs 30 --out benchmarks/results/sweep_wikipedia.json

Writes ``--out`` (default benchmarks/results/sweep.json) and its plots beside it as
``<out stem>_scaling_{loss,compute,performance}.png``; prints the tables and the path.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS, header, log, phase, private_home, private_settings, shutdown, write_result
from benchmarks.train.run import build_lake
from infra import cluster
from ingestion.synthetic import SyntheticConfig, generate_events
from training.sweep.cli import spec_from
from training.sweep.report import doubling_lines, fit_table, trial_table
from training.sweep.runner import fits_document, group_by_encoder, prepare_sweep, run_sweep

RESULT = RESULTS / "sweep.json"
KEPT_METRICS = (
    "non_embedding_params", "embedding_params", "train_users", "train_tokens", "data_apen", "epochs_run",
    "tokens_seen", "train_flops", "val_cross_entropy", "best_val_ndcg_10", "best_val_hr_10", "best_val_all_ndcg_10",
    "best_val_all_hr_10", "test_ndcg_10", "test_hr_10", "test_all_ndcg_10", "test_all_hr_10", "best_epoch",
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, help="a replay file instead of the synthetic stream")
    parser.add_argument("--format", choices=("sasrec", "movielens", "csv"), default="sasrec")
    parser.add_argument("--max-users", type=int, default=0, help="--dataset: only its first N users (0 = all)")
    parser.add_argument("--users", type=int, default=500, help="synthetic users")
    parser.add_argument("--items", type=int, default=500, help="synthetic items")
    parser.add_argument("--events", type=int, default=20_000, help="synthetic events")
    parser.add_argument("--encoders", default="hstu")
    parser.add_argument("--dims", default="8,16")
    parser.add_argument("--blocks", default="1")
    parser.add_argument("--max-lens", default="20")
    parser.add_argument("--fractions", default="0.5,1")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--protocol", choices=("seen_filtered", "all_items"), default="seen_filtered",
                        help="whose validation HR/NDCG the laws fit")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=3, help="most epochs per trial (early stopping may end sooner)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers per trial")
    parser.add_argument("--max-concurrent", type=int, default=None, help="most trials at once")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    with private_home("sweep") as home:
        run(args, home)


def run(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    """The sweep of ``args`` on a private cluster in ``home``; writes ``args.out`` and the plots."""
    settings = private_settings(home)
    axes = {"encoders": args.encoders, "dims": args.dims, "blocks": args.blocks, "max_lens": args.max_lens,
            "fractions": args.fractions, "seeds": args.seeds}  # fmt: skip
    spec = spec_from(None, axes, args.epochs, args.workers, args.max_concurrent, f"benchmark-{args.out.stem}",
                     args.protocol)  # fmt: skip
    started = time.perf_counter()
    result: dict[str, Any] = {**header("sweep", args, seeds=sorted(set(spec.seeds))), "spec": spec.model_dump()}
    try:
        with phase("cluster"):
            cluster.up(settings, ["mlflow", "ray"])
        with phase("data"):
            result["data"] = build_lake(settings, _events(args))
            log(f"data: {result['data']}")
        with phase("sweep") as record:
            prepared = prepare_sweep(settings, spec)
            with tempfile.TemporaryDirectory(prefix="streamrec-bench-sweep-") as scratch:
                outcome = run_sweep(settings, prepared, plots_dir=Path(scratch), log=log)
                plots = [_keep_plot(path, args.out) for path in outcome.plots]
        result["sweep_seconds"] = record["seconds"]
    finally:
        shutdown(settings)
    result.update(
        concurrency=prepared.plan.concurrency,
        trials=[
            {"label": row["label"], "key": row["key"], **{k: row[k] for k in KEPT_METRICS if k in row}}
            for row in outcome.rows
        ],  # fmt: skip
        failed=outcome.failed,
        fits=fits_document(outcome.fits),
        protocol=outcome.protocol,
        doubling=doubling_lines(group_by_encoder(outcome.rows), outcome.fits, outcome.protocol),
        plots=[str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path) for path in plots],
        seconds=round(time.perf_counter() - started, 1),
    )
    from infra.console import make_console

    console = make_console()
    console.print(trial_table(outcome.rows))
    console.print(fit_table(outcome.fits, outcome.protocol))
    for line in result["doubling"]:
        console.print(line)
    write_result(args.out, result)
    print(args.out)
    return result


def _events(args: argparse.Namespace) -> Any:
    """The benchmark's events: the replay file (its first ``--max-users`` users) or the synthetic stream."""
    if args.dataset is None:
        return generate_events(SyntheticConfig(users=args.users, items=args.items, events=args.events, seed=0))
    from ingestion.replay import read_replay, replay_events

    frame = read_replay(args.dataset, args.format)
    if args.max_users:
        first = frame["user_id"].drop_duplicates().head(args.max_users)
        frame = frame[frame["user_id"].isin(first)]
    return replay_events(frame)


def _keep_plot(path: Path, out: Path) -> Path:
    """A plot copied beside the result file as ``<out stem>_<plot name>``."""
    target = out.with_name(f"{out.stem}_{path.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(path, target))


if __name__ == "__main__":
    main()

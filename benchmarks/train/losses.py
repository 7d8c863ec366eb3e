"""Losses x item-table optimizers: full-catalogue quality and throughput (issue 24, items 1-3).

On a private mini-cluster (MLflow + Ray head on free ports, temporary home), one dataset is
replayed into silver (``--dataset PATH --format sasrec``; synthetic events without it) and
the real feature build runs. Then, for every model of ``--models``, loss of ``--losses``
(``sampled``: uniform + in-batch negatives as before; ``sampled_logq``: the same with logQ
correction; ``full``: softmax over the catalogue) and item-table optimizer of
``--table-optimizers`` (``rowwise_adagrad``: FBGEMM's fused kernel; ``adam``: torch Adam on
TorchRec's dense kernel on CPU), once per seed of ``--seeds``, on ``--workers`` Ray Train
workers: test NDCG@10 / HR@10 under both protocols (model selected on validation, test read
once), the best epoch, the epochs run and the train sequences/s (median over epochs). Mean
and std over seeds per cell.

``--loss-cost`` also times one forward + backward of each loss alone (no Ray, no model) on
random queries for catalogues of ``--cost-items`` items, and one Adam step over the whole
table: what the loss and the dense-kernel Adam cost as the catalogue grows, which sets
``full_loss_max_items`` (the size up to which ``loss auto`` is ``full``).

    .venv/bin/python -m benchmarks.train.losses --dataset ../shared/data/wikipedia.txt

``--cells`` names cells as MODEL/LOSS/OPTIMIZER, optionally with a fourth part of encoder
settings (``EncoderConfig`` fields, ``+``-separated), e.g. the reference SASRec's switches::

    --cells sasrec/full/rowwise_adagrad sasrec/full/rowwise_adagrad/scoring=dot+sasrec_post_norm=true

Writes benchmarks/results/train_losses_<dataset>.json (``--out``), after every cell.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, get_args

import torch

from benchmarks.harness import RESULTS, header, private_home, private_settings, shutdown, write_result
from benchmarks.train.run import quality_lake
from infra.settings import Settings
from ingestion.schema import ACTION_IDS
from training.common.config import EncoderConfig, LossKind, TableConfig
from training.common.loss import retrieval_loss
from training.retrieval.config import TrainConfig
from training.retrieval.runner import train

METRICS = ("test_ndcg_10", "test_hr_10", "test_all_ndcg_10", "test_all_hr_10")


def parse_cell(cell: str) -> tuple[str, str, str, dict[str, str]]:
    """(model, loss, table optimizer, encoder settings) of a ``--cells`` entry
    MODEL/LOSS/OPTIMIZER[/FIELD=VALUE+FIELD=VALUE...]; ValueError says what is wrong."""
    parts = cell.split("/")
    if len(parts) not in (3, 4):
        raise ValueError(f"cell {cell!r} is not MODEL/LOSS/OPTIMIZER[/FIELD=VALUE+...]")
    model, loss, optimizer = parts[:3]
    settings: dict[str, str] = {}
    for pair in parts[3].split("+") if len(parts) == 4 else []:
        field, equals, value = pair.partition("=")
        if not equals or not field:
            raise ValueError(f"cell {cell!r}: encoder setting {pair!r} is not FIELD=VALUE")
        settings[field] = value
    if loss not in get_args(LossKind) or optimizer not in ("rowwise_adagrad", "adam"):
        raise ValueError(f"cell {cell!r}: loss one of {get_args(LossKind)}, optimizer rowwise_adagrad or adam")
    EncoderConfig.model_validate({"kind": model, **settings})  # a bad field or value fails before the lake build
    return model, loss, optimizer, settings


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value), rounded."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 4), "std": round(std, 4)}


def loss_cost(items: list[int], *, positions: int, dim: int, negatives: int, repeats: int) -> dict[str, Any]:
    """Seconds of one forward + backward of each loss over ``positions`` query positions, per
    catalogue size (median of ``repeats``; the embeddings only, no encoder, no lookup)."""
    generator = torch.Generator().manual_seed(0)
    rows = max(1, positions // 50)
    length = positions // rows + 1
    out: dict[str, Any] = {"positions": rows * (length - 1), "dim": dim, "negatives": negatives, "seconds": {}}
    for count in items:
        batch = {
            "item_indices": torch.randint(1, count + 1, (rows, length), generator=generator),
            "action_ids": torch.full((rows, length), ACTION_IDS["view"]),
            "lengths": torch.full((rows,), length),
            "valid": torch.ones(rows, dtype=torch.bool),
        }
        table = torch.randn(count + 1, dim, generator=generator)
        cells: dict[str, float] = {}
        for kind in get_args(LossKind):
            times = []
            for _ in range(repeats):
                hidden = torch.randn(rows, length, dim, generator=generator, requires_grad=True)
                rows_needed = (
                    torch.arange(1, count + 1) if kind == "full" else torch.randint(1, count + 1, (negatives,))
                )
                candidates = table[rows_needed].requires_grad_()
                history = table[batch["item_indices"]].requires_grad_()
                started = time.perf_counter()
                terms = retrieval_loss(hidden, history, batch, rows_needed, candidates, temperature=0.05,
                                       in_batch_negatives=negatives, ntr_weight=0.0, kind=kind, num_items=count,
                                       generator=generator)  # fmt: skip
                terms.total.backward()
                times.append(time.perf_counter() - started)
            cells[kind] = round(statistics.median(times), 4)
        cells["adam_step_whole_table"] = _adam_step_seconds(count + 1, dim + 2, repeats)
        out["seconds"][str(count)] = cells
        print(f"loss cost, {count} items: {json.dumps(cells)}", flush=True)
    return out


def _adam_step_seconds(rows: int, width: int, repeats: int) -> float:
    """Median seconds of one ``torch.optim.Adam`` step over a (rows, width) table: what the
    dense-kernel table optimizer adds to every batch on CPU (it updates the whole shard)."""
    table = torch.zeros(rows, width, requires_grad=True)
    optimizer = torch.optim.Adam([table], lr=1e-3)
    times = []
    for _ in range(repeats + 1):  # the first step allocates the state
        table.grad = torch.randn(rows, width)
        started = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times[1:]), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, help="a dataset file (synthetic events without it)")
    parser.add_argument("--format", choices=("sasrec", "movielens", "csv"), default="sasrec")
    parser.add_argument("--events", type=int, default=100_000, help="synthetic events (without --dataset)")
    parser.add_argument("--models", nargs="+", choices=("hstu", "sasrec"), default=["sasrec", "hstu"])
    parser.add_argument("--losses", nargs="+", choices=get_args(LossKind), default=list(get_args(LossKind)))
    parser.add_argument(
        "--table-optimizers", nargs="+", choices=("rowwise_adagrad", "adam"), default=["rowwise_adagrad", "adam"]
    )
    parser.add_argument(
        "--cells",
        nargs="+",
        metavar="MODEL/LOSS/OPTIMIZER[/FIELD=VALUE+...]",
        help="these cells, in this order, instead of the grid; the optional fourth part sets encoder fields",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=200, help="hard cap (early stopping ends runs sooner)")
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--patience-fraction", type=float, default=0.25)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--val-users", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (the table's too under adam)")
    parser.add_argument("--batch-size", type=int, default=128, help="sequences per batch on each worker")
    parser.add_argument("--temperature", type=float, default=0.05, help="softmax temperature over cosine similarities")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--loss-cost", action="store_true", help="also time each loss alone by catalogue size")
    parser.add_argument("--cost-items", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--skip-training", action="store_true", help="only --loss-cost")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--markdown", type=Path, metavar="RESULT", help="print a result file's table as Markdown")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    for cell in args.cells or []:
        try:
            parse_cell(cell)
        except ValueError as error:  # pydantic's ValidationError is one
            parser.error(str(error))
    name = args.dataset.stem if args.dataset else "synthetic"
    out = args.out or RESULTS / f"train_losses_{name}.json"
    result: dict[str, Any] = {**header("train_losses", args, seeds=args.seeds)}
    if args.loss_cost:
        result["loss_cost"] = loss_cost(args.cost_items, positions=128 * 50, dim=50, negatives=128, repeats=3)
        write_result(out, result)
    if not args.skip_training:
        with private_home("train-losses") as home:
            run(args, private_settings(home), name, out, result)
    print(f"\nresults: {out}")


def run(args: argparse.Namespace, settings: Settings, name: str, out: Path, result: dict[str, Any]) -> None:
    """Every cell over every seed on the private cluster of ``settings``; writes ``out`` after each cell."""
    started = time.perf_counter()
    table: dict[str, Any] = {}
    try:
        result["data"] = quality_lake(settings, args.dataset, args.format, args.events, name)
        cells = args.cells or [
            f"{model}/{loss}/{optimizer}"
            for model in args.models
            for loss in args.losses
            for optimizer in args.table_optimizers
        ]
        for cell in cells:
            model, loss, optimizer, encoder = parse_cell(cell)
            runs = []
            for seed in args.seeds:
                runs.append(_one_run(settings, args, model, loss, optimizer, encoder, seed))
                print(f"{cell} seed {seed}: {json.dumps(runs[-1])}", flush=True)
            table[cell] = {
                "runs": runs,
                "summary": {key: mean_std([r[key] for r in runs]) for key in (*METRICS, "seq_per_s")},
            }
            write_result(out, {**result, "table": table, "complete": False})  # a cut-short run keeps its cells
    finally:
        shutdown(settings)
    result.update(table=table, complete=True, seconds=round(time.perf_counter() - started, 1))
    print(f"\n{name}: test metrics, mean ± std over seeds {args.seeds}")
    print(f"{'cell':<36}" + "".join(f"{key:>20}" for key in (*METRICS, "seq_per_s")))
    for cell, row in table.items():
        cells = [row["summary"][key] for key in (*METRICS, "seq_per_s")]
        print(f"{cell:<36}\n{'':<36}" + "".join(f"{c['mean']:>13.4f}±{c['std']:<6.4f}" for c in cells))
    write_result(out, result)


def markdown(result: dict[str, Any]) -> str:
    """A result file's table as Markdown rows (mean ± std over its seeds), as docs/training.md shows it."""
    lines = [
        "| model | loss | item table | NDCG@10 | HR@10 | NDCG@10 all items | HR@10 all items | sequences/s "
        "| best / run epochs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cell, row in result["table"].items():
        summary = row["summary"]
        figures = [f"{summary[key]['mean']:.4f} ± {summary[key]['std']:.4f}" for key in METRICS]
        rate = f"{summary['seq_per_s']['mean']:.0f} ± {summary['seq_per_s']['std']:.0f}"
        epochs = ", ".join(f"{run['best_epoch']}/{run['epochs_run']}" for run in row["runs"])
        model, loss, optimizer, encoder = parse_cell(cell)
        if encoder:
            model += " (" + ", ".join(f"{field}={value}" for field, value in encoder.items()) + ")"
        lines.append(f"| {model} | {loss} | {optimizer} | {' | '.join(figures)} | {rate} | {epochs} |")
    return "\n".join(lines)


def _one_run(
    settings: Settings,
    args: argparse.Namespace,
    model: str,
    loss: str,
    optimizer: str,
    encoder: dict[str, str],
    seed: int,
) -> dict[str, Any]:
    config = TrainConfig(
        encoder=EncoderConfig.model_validate({"kind": model, "max_len": args.max_len, **encoder}),
        table=TableConfig(embedding_optimizer=optimizer),
        loss=loss,
        epochs=args.epochs,
        patience=args.patience,
        patience_fraction=args.patience_fraction,
        val_users=args.val_users,
        lr=args.lr,
        batch_size=args.batch_size,
        temperature=args.temperature,
        seed=seed,
    )
    started = time.perf_counter()
    outcome = train(settings, config, workers=args.workers, log=lambda message: None)
    rates = [row["train_sequences_per_s"] for row in outcome.history]
    return {
        "seed": seed,
        "best_epoch": outcome.best_epoch,
        "epochs_run": len(outcome.history),
        "seq_per_s": round(statistics.median(rates[1:] if len(rates) > 1 else rates), 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        **{key: outcome.metrics[key] for key in METRICS},
        "best_val_ndcg_10": outcome.metrics["best_val_ndcg_10"],
        "best_val_sample_ndcg_10": outcome.metrics.get("best_val_sample_ndcg_10"),
    }


if __name__ == "__main__":
    main()

"""RecBole's SASRec trained with full cross-entropy on streamrec's split and protocol (issue 24, item 4).

The reference runs outside the project: RecBole and its torch are installed into their own
virtual environment (``--venv``, created on first use with the pins of ``REQUIREMENTS``;
never the project's ``.venv``), and each seed runs there in a subprocess
(``recbole_driver.py``). This side converts the dataset with streamrec's leave-last-out split
(``atomic``), passes the settings that match streamrec's SASRec (``sasrec_config``), times
each seed's subprocess and collects its test metrics under both protocols.

    flock /tmp/streamrec-heavy.lock .venv/bin/python -m benchmarks.reference.sasrec_recbole \
        --dataset ../shared/data/wikipedia.txt

Writes benchmarks/results/reference_sasrec_<dataset>.json (``--out``), after every seed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS, command, header, log, write_result
from benchmarks.reference.atomic import TRAIN_WINDOWS, read_sequences, split_rows, write_atomic
from benchmarks.train.losses import METRICS, mean_std

DRIVER = Path(__file__).with_name("recbole_driver.py")
DEFAULT_VENV = Path("/tmp/streamrec-reference-venv")
# torch: the project's version (CPU wheel). RecBole 1.2.1 sets np.float = np.float_, which numpy 2
# removed, so numpy 1.26 and the pandas, scipy and scikit-learn releases built for it.
REQUIREMENTS = [
    "recbole==1.2.1",
    "torch==2.13.0",
    "numpy==1.26.4",
    "pandas==2.2.3",
    "scipy==1.13.1",
    "scikit-learn==1.5.2",
]
VERSIONS = ("recbole", "torch", "numpy", "pandas", "scipy")


def sasrec_config(args: argparse.Namespace, checkpoint_dir: Path) -> dict[str, Any]:
    """RecBole settings at streamrec's SASRec sizes (dim 50, 2 blocks, 1 head, a ReLU
    feed-forward as wide as dim, dropout 0.2, max_len 50, Adam lr 1e-3, batch 128) with the
    cross-entropy loss over the whole catalogue, and streamrec's early stopping: the best
    epoch on validation NDCG@10, stopping after ``patience`` epochs without a better one
    (RecBole stops after ``stopping_step`` + 1)."""
    return {
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "hidden_size": args.dim,
        "inner_size": args.dim,
        "n_layers": 2,
        "n_heads": 1,
        "hidden_act": "relu",
        "hidden_dropout_prob": args.dropout,
        "attn_dropout_prob": args.dropout,
        "MAX_ITEM_LIST_LENGTH": args.max_len,
        "learning_rate": args.lr,
        "train_batch_size": args.batch_size,
        "eval_batch_size": 4096,
        "epochs": args.epochs,
        "stopping_step": args.patience - 1,
        "eval_step": 1,
        "valid_metric": "NDCG@10",
        "metrics": ["Hit", "NDCG"],
        "topk": [10],
        "eval_args": {"mode": "full", "order": "TO", "split": {"LS": "valid_and_test"}, "group_by": "user"},
        "benchmark_filename": ["train", "valid", "test"],
        "alias_of_item_id": ["item_id_list"],
        "load_col": {"inter": ["user_id", "item_id_list", "item_id"]},
        "use_gpu": False,
        "worker": 0,
        "show_progress": False,
        "checkpoint_dir": str(checkpoint_dir),
    }


def ensure_venv(venv: Path) -> Path:
    """The reference environment's Python, creating the environment when it does not exist."""
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"creating the reference environment {venv} ({', '.join(REQUIREMENTS)})")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
    return python


def versions(python: Path) -> dict[str, str]:
    """The versions of the reference environment's packages that matter here."""
    code = "import importlib.metadata as m, json, sys; print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    done = subprocess.run([str(python), "-c", code, *VERSIONS], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def run_seed(python: Path, data_dir: Path, name: str, seed: int, config: dict[str, Any], work: Path) -> dict[str, Any]:
    """One seed in a subprocess (working directory ``work``, where RecBole writes its logs);
    its metrics and wall clock."""
    out = work / f"seed-{seed}.json"
    command = [str(python), str(DRIVER), "--data-dir", str(data_dir), "--name", name, "--seed", str(seed),
               "--config", json.dumps(config), "--out", str(out)]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"seed {seed} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {**json.loads(out.read_text()), "wall_seconds": round(wall, 1)}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of the test metrics and the wall clock."""
    return {key: mean_std([run[key] for run in runs]) for key in (*METRICS, "wall_seconds", "fit_seconds")}


def merge(results: list[dict[str, Any]], note: str | None) -> dict[str, Any]:
    """Result files of the same settings run separately (seeds split between processes) as one:
    the first file's header, every run, the summary over all of them and where each came from."""
    settings = [{k: v for k, v in r["arguments"].items() if k not in ("seeds", "out")} for r in results]
    if any(other != settings[0] for other in settings[1:]) or any(r["config"] != results[0]["config"] for r in results):
        raise ValueError("the results were run with different settings; merge only runs of one setting")
    runs = sorted((run for result in results for run in result["runs"]), key=lambda run: run["seed"])
    seeds = [run["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed appears twice among the results: {seeds}")
    sources = [{"command": r["command"], "when": r["when"], "commit": r["commit"],
                "seeds": [run["seed"] for run in r["runs"]]} for r in results]  # fmt: skip
    merged = {**results[0], "merge_command": command(), "seeds": seeds, "merged_from": sources, "runs": runs}
    return {**merged, "summary": summary(runs), "complete": True, **({"note": note} if note else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--merge", type=Path, nargs="+", metavar="RESULT", help="join result files into --out")
    parser.add_argument("--note", help="with --merge: a remark kept in the file (how a part was run)")
    parser.add_argument("--dataset", type=Path, help="a SASRec-format file: `user item` per line")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--train-window",
        choices=TRAIN_WINDOWS,
        default="max_len",
        help="train targets: streamrec's (the last max_len events of each train sequence) or RecBole's (all)",
    )
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the reference environment (made if absent)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.merge:
        if not args.out:
            parser.error("--merge needs --out")
        print(write_result(args.out, merge([json.loads(path.read_text()) for path in args.merge], args.note)))
        return
    if not args.dataset:
        parser.error("--dataset is required")
    name = args.dataset.stem
    out = args.out or RESULTS / f"reference_sasrec_{name}.json"
    python = ensure_venv(args.venv)
    result: dict[str, Any] = {**header("reference_sasrec", args, seeds=args.seeds), "reference": versions(python)}
    with tempfile.TemporaryDirectory(prefix="streamrec-reference-") as temp:
        work = Path(temp)
        started = time.perf_counter()
        rows = split_rows(read_sequences(args.dataset), args.max_len, args.train_window)
        result["data"] = {"name": name, "rows": write_atomic(rows, work, name)}
        result["convert_seconds"] = round(time.perf_counter() - started, 1)
        config = sasrec_config(args, work / "saved")
        result["config"] = {key: value for key, value in config.items() if key != "checkpoint_dir"}
        runs = []
        for seed in args.seeds:
            log(f"seed {seed} ...")
            runs.append(run_seed(python, work, name, seed, config, work))
            log(f"seed {seed}: {json.dumps(runs[-1])}")
            write_result(out, {**result, "runs": runs, "summary": summary(runs), "complete": False})
    write_result(out, {**result, "runs": runs, "summary": summary(runs), "complete": True})
    print(json.dumps(result["reference"]))
    for key, value in summary(runs).items():
        print(f"{key:<20} {value['mean']:.4f} ± {value['std']:.4f}")
    print(out)


if __name__ == "__main__":
    main()

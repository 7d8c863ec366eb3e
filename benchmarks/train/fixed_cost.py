"""What a tiny retrieval run costs besides its epochs, phase by phase.

On a private mini-cluster (MLflow + Ray head, temporary home) with a tiny lake (300 users,
1,000 items, 30,000 synthetic events, as tests/pipelinedata.py), ``training.retrieval.runner.train``
runs ``--epochs`` epochs of the tests' tiny HSTU on 1 and 2 workers, ``--repeats`` times each,
in each variant of the Ray Train settings (``VARIANTS``, interleaved); ``job_in_train_loop_config``
hands the job to Ray Train as the driver did before it bound the job to the entry point.
The driver's steps are timed by wrapping the runner's and driver's functions; the workers'
by a Ray Train entry point (``timed_worker``) that wraps the worker module's steps and writes
its timeline next to the run. Every phase is seconds from the start of ``train``.

    .venv/bin/python -m benchmarks.train.fixed_cost [--epochs 2] [--repeats 2] [--workers 1 2]

Writes benchmarks/results/train_fixed_cost.json (``--out``) and prints each run's breakdown;
``--markdown RESULT`` prints a result's medians as the table docs/training.md shows.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS, header, private_home, private_settings, shutdown, write_result
from ingestion.synthetic import SyntheticConfig, generate_events

RESULT = RESULTS / "train_fixed_cost.json"
EVENTS = SyntheticConfig(users=300, items=1_000, events=30_000, clusters=20, seed=0)
Span = tuple[str, float, float]  # (phase, started, ended) in time.time() seconds
# The driver's settings, with the job handed to Ray Train as train_loop_config, as the driver did
# before it bound the job to the entry point (Ray Train's controller unpickles train_loop_config).
JOB_IN_LOOP_CONFIG = "job_in_train_loop_config"
# The Ray Train settings each variant runs with (training.common.driver.RAY_TRAIN_ENV sets the
# rest): Ray's defaults, then the driver's cuts one by one (the last is the driver as it is).
VARIANTS: dict[str, dict[str, str]] = {
    "ray_defaults": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2.0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"},
    "poll_0.5s": {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"},
    JOB_IN_LOOP_CONFIG: {},
    "poll_0.5s_no_preemption_watcher": {},
}


def wrap(module: Any, name: str, label: str, spans: list[Span]) -> None:
    """Replace ``module.name`` by the same function recording a span ``label`` per call."""
    original = getattr(module, name)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            spans.append((label, started, time.time()))

    setattr(module, name, timed)


def timed_worker(loop_config: dict[str, Any]) -> None:
    """``train_worker`` with its steps timed; the spans go to ``<home>/fixed-cost/<run_id>-<rank>.json``."""
    entered = time.time()
    import ray.train

    from training.common import worker_loop
    from training.retrieval import worker

    spans: list[Span] = [("worker: imports in the entry point", entered, time.time())]
    for module, name, label in (
        (worker, "load_examples", "worker: load split"),
        (worker, "shard_model", "worker: DMP sharding (planner)"),
        (worker, "_restore", "worker: restore/warm start"),
        (worker, "_train_epoch", "worker: train epoch"),
        (worker, "_evaluate", "worker: validation"),
        (worker, "_checkpoint", "worker: checkpoint write"),
        (ray.train, "report", "worker: ray.train.report"),
        (worker_loop, "log_metrics", "worker: MLflow epoch metrics"),
    ):
        wrap(module, name, label, spans)
    job = loop_config["job"]
    rank = ray.train.get_context().get_world_rank()
    try:
        worker.train_worker(loop_config)
    finally:
        spans.append(("worker: train_worker", entered, time.time()))
        target = Path(job.settings.home) / "fixed-cost" / f"{job.run_id}-{rank}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(spans))


def job_in_loop_config(torch_trainer: Any, worker: Any, job: Any, **options: Any) -> Any:
    """``torch_trainer``'s (``training.common.driver``'s) trainer with the job in ``train_loop_config``."""
    from ray.train.torch import TorchTrainer

    trainer = torch_trainer(worker, job, **options)
    return TorchTrainer(
        worker,
        train_loop_config={"job": job},
        torch_config=trainer.backend_config,
        scaling_config=trainer.scaling_config,
        run_config=trainer.run_config,
    )


def driver_spans(spans: list[Span]) -> None:
    """Time the driver's steps of ``training.retrieval.runner.train`` into ``spans``."""
    from training.common import driver, tracking
    from training.retrieval import runner

    for module, name, label in (
        (driver, "connect", "driver: Ray connect"),
        (driver, "check_resources", "driver: resource check"),
        (runner, "latest_versions", "driver: feature versions"),
        (tracking, "start_run", "driver: MLflow run + params"),
        (runner, "write_job", "driver: job record"),
        (driver, "fit", "driver: Ray Train fit"),
        (driver, "best_epoch", "driver: best checkpoint copy"),
        (runner, "load_examples", "driver: load val/test split"),
        (runner, "_split_metrics", "driver: final evaluation"),
        (tracking, "log_metrics", "driver: MLflow metrics"),
        (runner, "plot_curves", "driver: training curve PNG"),
        (tracking, "log_artifacts", "driver: artifact upload"),
        (tracking, "register", "driver: registry version"),
        (tracking, "set_tags", "driver: MLflow tags"),
    ):
        wrap(module, name, label, spans)
    runner.train_worker = timed_worker  # the fit's entry point


def controller_spans(fit: Span, worker: list[Span]) -> list[Span]:
    """The Ray Train controller's steps of the run whose ``fit`` span is given, from its log in
    the session's ``logs/train``, and the hand-overs between it and the worker's entry point."""
    import ray

    node = ray._private.worker.global_worker.node
    if node is None:  # not connected: no session to read
        return []
    logs = Path(node.get_session_dir_path()) / "logs" / "train"
    events: list[tuple[float, str]] = []
    for path in logs.glob("ray-train-sys-controller-*.log"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
        stamps = [(time.mktime(time.strptime(line["asctime"][:19], "%Y-%m-%d %H:%M:%S"))
                   + int(line["asctime"][20:]) / 1000, line["message"]) for line in lines]  # fmt: skip
        if stamps and fit[1] <= stamps[0][0] <= fit[2]:
            events = stamps
    if not events:
        return []

    def at(prefix: str) -> float:
        return next(stamp for stamp, message in events if prefix in message)

    entered = next(begun for label, begun, _ in worker if label == "worker: train_worker")
    returned = next(ended for label, _, ended in worker if label == "worker: train_worker")
    requested, attempted = at("Requesting resources"), at("Attempting to start training worker group")
    actors, context = at("worker actors created in"), at("Train context initialized on workers in")
    return [
        ("ray train: controller start (process, imports)", fit[1], events[0][0]),
        ("ray train: resource request", requested, attempted),
        ("ray train: worker actors created", attempted, actors),
        ("ray train: train context (torch, process group)", actors, context),
        ("ray train: launch to entry point (unpickling)", context, entered),
        ("ray train: train_worker return to fit return", returned, fit[2]),
    ]


def breakdown(spans: list[Span], started: float) -> list[dict[str, Any]]:
    """Each phase's total seconds and when it first started, from the start of ``train``."""
    phases: dict[str, dict[str, Any]] = {}
    for label, begun, ended in spans:
        phase = phases.setdefault(label, {"phase": label, "first_start_s": round(begun - started, 2), "seconds": 0.0})
        phase["seconds"] = round(phase["seconds"] + ended - begun, 2)
        phase["calls"] = phase.get("calls", 0) + 1
    return sorted(phases.values(), key=lambda phase: phase["first_start_s"])


def one_run(settings: Any, epochs: int, workers: int, variant: str, spans: list[Span]) -> dict[str, Any]:
    """One timed tiny run of ``variant``: its total seconds, epoch seconds and phases (driver and rank 0)."""
    from tests.pipelinedata import tiny_config
    from training.common import driver
    from training.retrieval.runner import train

    spans.clear()
    os.environ.update(VARIANTS[variant])
    bound = driver.torch_trainer
    if variant == JOB_IN_LOOP_CONFIG:
        driver.torch_trainer = functools.partial(job_in_loop_config, bound)
    started = time.time()
    try:
        outcome = train(settings, tiny_config("hstu", epochs=epochs), workers=workers, log=lambda *_: None)
    finally:
        driver.torch_trainer = bound
        for key in VARIANTS[variant]:
            os.environ.pop(key)
    total = time.time() - started
    worker_file = settings.home / "fixed-cost" / f"{outcome.run_id}-0.json"
    worker: list[Span] = []
    if worker_file.exists():
        worker = [(label, begun, ended) for label, begun, ended in json.loads(worker_file.read_text())]
    fit = next(span for span in spans if span[0] == "driver: Ray Train fit")
    ray_train = controller_spans(fit, worker)
    epoch_seconds = sum(row["train_seconds"] for row in outcome.history)
    return {
        "variant": variant,
        "workers": workers,
        "epochs": len(outcome.history),
        "total_s": round(total, 2),
        "train_epoch_s": round(epoch_seconds, 2),
        "phases": breakdown(spans + worker + ray_train, started),
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant and worker count: median total and median seconds of each phase over the repeats."""
    out: dict[str, Any] = {}
    for variant, workers in sorted({(run["variant"], run["workers"]) for run in runs}):
        mine = [run for run in runs if run["variant"] == variant and run["workers"] == workers]
        phases: dict[str, list[float]] = {}
        for run in mine:
            for phase in run["phases"]:
                phases.setdefault(phase["phase"], []).append(phase["seconds"])
        out[f"{variant}/{workers}_workers"] = {
            "total_s": {
                "median": round(statistics.median(r["total_s"] for r in mine), 1),
                "min": min(r["total_s"] for r in mine),
                "max": max(r["total_s"] for r in mine),
            },
            "phase_median_s": {name: round(statistics.median(values), 2) for name, values in phases.items()},
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    """The summary's median seconds per phase, one column per variant and worker count."""
    # Ray's defaults first, then the cuts in the order they were made.
    columns = sorted(result["summary"], key=lambda column: (list(VARIANTS).index(column.split("/")[0]), column))
    names: list[str] = []
    for column in columns:
        names += [name for name in result["summary"][column]["phase_median_s"] if name not in names]
    rows = [
        "| phase | " + " | ".join(columns) + " |",
        "| --- |" + " ---: |" * len(columns),
        "| **whole run** (median, min-max) | "
        + " | ".join("**{median}** ({min}-{max})".format(**result["summary"][column]["total_s"]) for column in columns)
        + " |",
    ]
    for name in names:
        cells = [result["summary"][column]["phase_median_s"].get(name, "") for column in columns]
        rows.append(f"| {name} | " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--markdown", type=Path, metavar="RESULT", help="print a result file's table as Markdown")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    from benchmarks.train.run import build_lake
    from infra import cluster

    result: dict[str, Any] = {**header("train_fixed_cost", args, seeds=[0]), "data": EVENTS.__dict__}
    spans: list[Span] = []
    with private_home("fixed-cost") as home:
        settings = private_settings(home)
        try:
            cluster.up(settings, ["mlflow", "ray"])
            build_lake(settings, generate_events(EVENTS))
            driver_spans(spans)
            runs = []
            # Variants interleaved, so the machine's load changes alike for each.
            for repeat in range(args.repeats):
                for workers in args.workers:
                    for variant in args.variants:
                        run = one_run(settings, args.epochs, workers, variant, spans)
                        run["repeat"] = repeat
                        runs.append(run)
                        print(json.dumps(run, indent=1), flush=True)
        finally:
            shutdown(settings)
    result["runs"] = runs
    result["summary"] = summary(runs)
    print(json.dumps(result["summary"], indent=1))
    write_result(args.out, result)
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()

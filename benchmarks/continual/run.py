"""Continual-learning benchmark: what the hourly loop recovers of what a stale model loses.

A drifting synthetic stream (items launch and fade, docs/ingestion.md) is replayed a day at a
time through the real pipeline (Kafka -> Spark ingestion -> Delta silver -> incremental feature
build) on a private mini-cluster. After a warm-up of ``--warmup-days`` one model is trained
from scratch; then, for each of ``--windows`` days, three policies are scored on that day's
events, time-ordered (``training.retrieval.prequential``: each positive event predicted from the
user's history up to it, over the items that existed then; seen items filtered; "new items":
those launched after the initial model's data, which the frozen model cannot know):

* ``frozen``: the initial model, never updated;
* ``loop``: the hourly loop as the Dagster round runs it (``workflows.rounds``: the previous
  candidate gated by the freshness policy on the events since its data, then a warm start from
  production on all data so far): the model serving during the day, i.e. production after the
  gate. ``loop_candidate`` is the round's newest candidate itself, which the freshness gate
  only judges a round later: the gap between the two is what waiting for the gate costs;
* ``retrain``: a model trained from scratch on all data so far at each round (the upper bound,
  at its cost);
* ``streaming``: the model `streamrec train --follow` serves (``benchmarks.continual.streaming``):
  the follow loop's own learning step from the initial model on, fed each day in
  ``--stream-chunks`` slices of equal time (24: hours), each slice's events scored with the
  model after the slices before it. ``--streaming`` names variants (TrainConfig and follow
  options over the follow job's defaults), each a policy of its own.

A round runs at the end of each day from the second window on, on the data up to then; the
first window is scored before any round (every policy but streaming is still the initial model).
``--policies`` picks what runs: loop, loop_candidate and retrain come from one round (any of
them runs it), frozen costs nothing, streaming needs no round; the stream is deterministic per
seed, so a run of some policies merges into a file holding the others (``--merge``). Churn
settings (``--churn``) multiply the default launch rate (``ingestion.synthetic.DRIFTING``:
half the catalogue launches over 28 days, 1/56 of it a day); 0 is the static catalogue (no
launches, no life cycle).

    .venv/bin/python -m benchmarks.continual [--seeds 0,1,2] [--churn 1] [--policies frozen,streaming]
        [--stream-chunks 24] [--streaming JSON] [--resume] [--keep] [--merge OTHER.json ...] [--summarise]

Writes benchmarks/results/continual.json (``--out``) after every stream (``--resume`` keeps the
streams already there and runs the rest) and continual.png beside it (NDCG@10 per window, one
line per policy, mean and one std over seeds, one panel per churn); logs both, with each
policy's per-window metrics, to an MLflow run of the private cluster (``--keep`` leaves that
cluster and its home up to browse). Seeds can run in parallel, each process on its own private
cluster and ``--out``; ``--merge`` then takes the others' streams into one file, and the
policies a stream there lacks from another run of the same stream (the same events per window,
the frozen model's metrics compared and kept beside them), and ``--summarise`` rewrites its
summary and plot without running anything.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.continual.streaming import DEFAULT_CHUNKS, StreamingPolicy, Variant, learn_day, parse_variants
from benchmarks.harness import RESULTS, header, log, private_home, private_settings, shutdown, write_result
from features.build import build as build_features
from infra import cluster
from infra.cli import quiet_library_logs
from infra.settings import Settings, get_settings
from ingestion.day_feed import send_days
from ingestion.synthetic import DAY_MS, DRIFTING, SyntheticConfig
from serving.registry import promote, served_version
from training.retrieval.config import TrainConfig
from training.retrieval.prequential import NoOverlapError, parse_time_ms
from training.retrieval.runner import train
from training.retrieval.version_eval import evaluate_version_window
from workflows.promotion import FRESHNESS_GATE, run_gate
from workflows.rounds import (
    FULL_RETRAIN_TRAIN,
    WARM_START_TRAIN,
    TrainOptions,
    gate_pending,
    round_train_config,
    train_candidate,
)

RESULT = RESULTS / "continual.json"
RUN_KEYS = ("command", "commit", "when", "machine", "arguments", "seeds", "seconds")  # a run's header
POLICIES = ("frozen", "loop", "loop_candidate", "retrain", "streaming")
ROUND_POLICIES = ("loop", "loop_candidate", "retrain")  # one round makes all three
DEFAULT_LAUNCHES_PER_DAY = (1 - DRIFTING["initial_item_share"]) / SyntheticConfig.span_days  # share of the catalogue
KEPT = (  # window metrics kept per model
    "window_targets",
    "window_hr_10",
    "window_ndcg_10",
    "window_hr_50",
    "window_ndcg_50",
    "window_mrr",
    "window_all_ndcg_10",
    "window_unknown_target_share",
    "window_new_target_share",
    "window_new_ndcg_10",
)
SUMMARISED = ("window_ndcg_10", "window_hr_10", "window_unknown_target_share", "window_new_ndcg_10")
Quiet = Callable[[str], None]


def stream_config(args: argparse.Namespace, churn: float, seed: int, start_ms: int) -> SyntheticConfig:
    """The stream of one (churn, seed): warm-up plus windows days; ``churn`` times the default launch rate."""
    days = args.warmup_days + args.windows
    common = dict(users=args.users, items=args.items, events=args.events_per_day * days, seed=seed, span_days=days)
    if churn == 0:
        return SyntheticConfig(**common, start_ms=start_ms)
    initial_share = 1 - churn * DEFAULT_LAUNCHES_PER_DAY * days
    if initial_share <= 0:
        raise SystemExit(f"--churn {churn:g} launches more than the catalogue over {days} days")
    return SyntheticConfig.drifting(**common, initial_item_share=initial_share, start_ms=start_ms)


def refresh_features(settings: Settings, quiet: Quiet) -> None:
    build_features(settings, incremental=True, log=quiet)


def window_metrics(settings: Settings, version: str, start_ms: int, new_after_ms: int) -> dict[str, float]:
    """The kept time-ordered metrics of ``version`` on the day after ``start_ms`` ({} when it
    cannot be scored); new items: launched after ``new_after_ms``."""
    try:
        result, _ = evaluate_version_window(settings, version, start_ms, DAY_MS, new_after_ms=new_after_ms)
    except NoOverlapError:
        return {}
    return kept(result.metrics)


def kept(metrics: dict[str, float]) -> dict[str, float]:
    return {key: round(float(value), 6) for key, value in metrics.items() if key in KEPT}


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = function()
    return value, round(time.perf_counter() - started, 1)


Models = dict[str, tuple[Settings, str]]  # policy: (the settings naming its registered model, version)


def run_round(
    loop: Settings, retrain: Settings, warm: TrainConfig, scratch: TrainConfig, workers: int, quiet: Quiet
) -> tuple[Models, dict[str, Any]]:
    """One round as the Dagster round runs it (the pending candidate's freshness gate, a warm
    start from production, its gate, which waits), then a retrain from scratch: the models of
    the next window and what the round did (training and gate seconds, the gates' decisions)."""
    pending, pending_s = timed(lambda: gate_pending(loop, FRESHNESS_GATE, quiet))
    candidate, warm_s = timed(lambda: train_candidate(loop, TrainOptions(warm, workers=workers), quiet))
    version = candidate.trained.model_version
    gate, gate_s = timed(lambda: run_gate(loop, version, FRESHNESS_GATE))
    scratch_model, scratch_s = timed(lambda: train(retrain, scratch, workers=workers, log=quiet))
    production = served_version(loop)
    assert production is not None
    models = {
        "loop": (loop, production),
        "loop_candidate": (loop, version),
        "retrain": (retrain, scratch_model.model_version),
    }
    facts = {
        "train_s": {"loop": warm_s, "retrain": scratch_s},
        "epochs": {"loop": len(candidate.trained.history), "retrain": len(scratch_model.history)},
        "gate_s": round(pending_s + gate_s, 1),
        "pending_gate": None if pending is None else f"{pending.decision.label}: {pending.decision.reason}",
        "candidate_gate": f"{gate.decision.label}: {gate.decision.reason}",
    }
    return models, facts


def score(models: Models, start_ms: int, new_after_ms: int) -> dict[str, dict[str, float]]:
    """Each policy's window metrics on the day after ``start_ms``; a version shared by several is scored once."""
    scored: dict[tuple[str, str], dict[str, float]] = {}
    for where, version in models.values():
        key = (where.mlflow.registered_model, version)
        if key not in scored:
            scored[key] = window_metrics(where, version, start_ms, new_after_ms)
    return {policy: scored[(where.mlflow.registered_model, v)] for policy, (where, v) in models.items()}


def run_stream(base: Settings, args: argparse.Namespace, churn: float, seed: int, quiet: Quiet) -> dict[str, Any]:
    """Replay one stream and score the policies on each window; the stream's record."""
    started = time.perf_counter()
    tag = f"c{churn:g}-s{seed}".replace(".", "p")
    home = base.home / "streams" / tag
    loop = get_settings(home=home, topic=f"continual-{tag}", registered_model=f"continual-{tag}-loop")
    retrain = get_settings(home=home, topic=loop.kafka.topic, registered_model=f"continual-{tag}-retrain")
    stream = stream_config(args, churn, seed, parse_time_ms(args.start))
    assert stream.start_ms is not None
    scratch = round_train_config(FULL_RETRAIN_TRAIN, {"seed": seed})
    warm = round_train_config(WARM_START_TRAIN, {"seed": seed}, json.loads(args.warm_overrides))

    sent = send_days(loop, stream, None, args.warmup_days, show_progress=False, log=log)
    refresh_features(loop, quiet)
    initial, initial_s = timed(lambda: train(loop, scratch, workers=args.workers, log=quiet))
    promote(loop, initial.model_version)
    log(f"[{tag}] {sent:,} warm-up events; initial model v{initial.model_version} in {initial_s:.0f} s")
    record: dict[str, Any] = {
        "churn": churn,
        "seed": seed,
        "stream": {
            key: getattr(stream, key)
            for key in (
                "users",
                "items",
                "events",
                "span_days",
                "initial_item_share",
                "half_life_days",
                "rise_hours",
                "evergreen_share",
            )
        },  # fmt: skip
        "initial": {
            "version": initial.model_version,
            "train_s": initial_s,
            "epochs": len(initial.history),
            "events": sent,
        },
        "windows": [],
    }
    rounds = any(policy in args.policies for policy in ROUND_POLICIES)
    versions: Models = {"frozen": (loop, initial.model_version)} if "frozen" in args.policies else {}
    streaming = [StreamingPolicy(loop, int(initial.model_version), seed, variant) for variant in args.variants]
    new_after_ms = stream.start_ms + args.warmup_days * DAY_MS
    for window in range(1, args.windows + 1):
        day_start = args.warmup_days + window - 1
        start_ms = stream.start_ms + day_start * DAY_MS
        entry: dict[str, Any] = {"window": window, "start_ms": start_ms, "train_s": {}, "gate_s": 0.0}
        if rounds and window == 1:
            versions.update({name: (loop, initial.model_version) for name in ROUND_POLICIES})
        elif rounds:  # the round at the end of the previous day, on the data up to it
            models, facts = run_round(loop, retrain, warm, scratch, args.workers, quiet)
            versions.update(models)
            entry.update(facts)
        entry["events"] = send_days(loop, stream, day_start, day_start + 1, show_progress=False, log=log)
        if streaming:  # before the feature build, as the follow job runs beside it
            entry["streaming"] = learn_day(streaming, start_ms, DAY_MS, args.stream_chunks)
        refresh_features(loop, quiet)
        entry["versions"] = {policy: f"{where.mlflow.registered_model} v{v}" for policy, (where, v) in versions.items()}
        entry["metrics"] = score(versions, start_ms, new_after_ms=new_after_ms)
        for policy in streaming:
            where = f"follow job on v{initial.model_version} at silver/events v{policy.job.cursor}"
            entry["versions"][policy.variant.name] = where
            entry["metrics"][policy.variant.name] = kept(policy.score_day(start_ms, DAY_MS, new_after_ms))
        record["windows"].append(entry)
        ndcg = {policy: metrics.get("window_ndcg_10", math.nan) for policy, metrics in entry["metrics"].items()}
        log(f"[{tag}] window {window}: {entry['events']:,} events; NDCG@10 "
            + ", ".join(f"{policy} {value:.4f}" for policy, value in ndcg.items()))  # fmt: skip
    record["train_s"] = {}
    if rounds:
        record["train_s"] = {
            "loop": round(sum(w["train_s"].get("loop", 0.0) for w in record["windows"]), 1),
            "retrain": round(sum(w["train_s"].get("retrain", 0.0) for w in record["windows"]), 1),
            "loop_gate": round(sum(w["gate_s"] for w in record["windows"]), 1),
        }
    for policy in streaming:  # the follow job's learning, its slices' snapshots included
        name = policy.variant.name
        record["train_s"][name] = round(sum(w["streaming"][name]["seconds"] for w in record["windows"]), 1)
    if streaming:
        record["streaming"] = {
            "chunks": args.stream_chunks,
            "variants": {v.name: {"train": v.train, "follow": v.follow} for v in args.variants},
            "options": {p.variant.name: vars(p.job.options) for p in streaming},
        }
    record["seconds"] = round(time.perf_counter() - started, 1)
    return record


def mean_std(values: list[float]) -> dict[str, float]:
    present = [value for value in values if not math.isnan(value)]
    if not present:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    return {"mean": round(statistics.fmean(present), 5), "std": round(std, 5), "n": len(present)}


def policies_of(runs: list[dict[str, Any]]) -> list[str]:
    """The policies every window of every run scored: POLICIES' order, then other streaming variants by name."""
    held = set.intersection(*(set(window["metrics"]) for run in runs for window in run["windows"]))
    return [policy for policy in POLICIES if policy in held] + sorted(held - set(POLICIES))


def summarise(streams: list[dict[str, Any]]) -> dict[str, Any]:
    """Per churn: each policy's metrics per window (mean, std over the seeds whose run scored it,
    named in ``seeds_by_policy`` when not all), training seconds and the targets (the loop's when
    every run holds the round's policies; a streaming policy's on the runs that hold it and the loop)."""
    summary: dict[str, Any] = {}
    for churn in sorted({stream["churn"] for stream in streams}):
        runs = [stream for stream in streams if stream["churn"] == churn]
        windows = min(len(run["windows"]) for run in runs)
        held = {policy: [run for run in runs if policy in policies_of([run])] for policy in _any_policies(runs)}
        per_window = {policy: _per_window(holding, policy, windows) for policy, holding in held.items()}
        timed_names = set.intersection(*(set(run["train_s"]) for run in runs))
        train_s = {name: mean_std([run["train_s"][name] for run in runs]) for name in sorted(timed_names)}
        found: dict[str, Any] = {}
        if {"frozen", *ROUND_POLICIES} <= set(policies_of(runs)):
            found = targets(per_window, train_s)
        for policy, holding in held.items():
            compared = [run for run in holding if "loop" in policies_of([run])]
            if policy not in ("frozen", *ROUND_POLICIES) and compared:
                found[policy] = streaming_targets(compared, policy, windows)
        summary[f"{churn:g}"] = {
            "seeds": [run["seed"] for run in runs],
            "seeds_by_policy": {
                policy: [run["seed"] for run in holding] for policy, holding in held.items() if len(holding) < len(runs)
            },
            "windows": per_window,
            "train_s": train_s,
            "targets": found,
        }
    return summary


def _any_policies(runs: list[dict[str, Any]]) -> list[str]:
    """The policies some run scored in every window, in ``policies_of``'s order."""
    found = {policy for run in runs for policy in policies_of([run])}
    return [policy for policy in POLICIES if policy in found] + sorted(found - set(POLICIES))


def _per_window(runs: list[dict[str, Any]], policy: str, windows: int) -> dict[str, list[dict[str, float]]]:
    return {
        metric: [
            mean_std([run["windows"][w]["metrics"][policy].get(metric, math.nan) for run in runs])
            for w in range(windows)
        ]
        for metric in SUMMARISED
    }


def streaming_targets(runs: list[dict[str, Any]], policy: str, windows: int) -> dict[str, Any]:
    """Issue 27's target for ``policy`` against the hourly loop: NDCG@10 on the newest window
    beyond one std above the loop's, read as the loops' targets read it (the mean +- std bands
    apart), with the weaker reading (its mean above the loop's mean + std) beside it; the same
    per window, over all windows (each seed's mean over them, then mean and std over seeds), and
    for the new items' NDCG@10; on ``runs``, each holding both (their seeds: ``seeds``)."""
    result: dict[str, Any] = {"seeds": [run["seed"] for run in runs]}
    mine, loops = _per_window(runs, policy, windows), _per_window(runs, "loop", windows)
    for metric in ("window_ndcg_10", "window_new_ndcg_10"):
        ours, loop = mine[metric], loops[metric]
        compared = {
            "newest_window": (ours[-1], loop[-1]),
            "all_windows": (_over_windows(runs, policy, metric, windows), _over_windows(runs, "loop", metric, windows)),
        }
        found: dict[str, Any] = {}
        for where, (a, b) in compared.items():
            found[where] = {
                policy: a,
                "loop": b,
                "beyond_one_std": _apart(a, b),
                "mean_above_loop_mean_plus_std": bool(a["mean"] > b["mean"] + b["std"]),
            }
        found["windows_beyond_one_std"] = [w + 1 for w in range(windows) if _apart(ours[w], loop[w])]
        found["windows_below_loop"] = [w + 1 for w in range(windows) if ours[w]["mean"] < loop[w]["mean"]]
        result[metric] = found
    result["met"] = result["window_ndcg_10"]["newest_window"]["beyond_one_std"]
    return result


def _over_windows(runs: list[dict[str, Any]], policy: str, metric: str, windows: int) -> dict[str, float]:
    """Mean and std over seeds of each seed's mean of ``metric`` over the windows that have it."""
    per_run = []
    for run in runs:
        values = [run["windows"][w]["metrics"][policy].get(metric, math.nan) for w in range(windows)]
        present = [value for value in values if not math.isnan(value)]
        per_run.append(statistics.fmean(present) if present else math.nan)
    return mean_std(per_run)


def _apart(a: dict[str, float], b: dict[str, float]) -> bool:
    """``a``'s mean - std above ``b``'s mean + std (both present)."""
    return bool(a["n"] and b["n"] and a["mean"] - a["std"] > b["mean"] + b["std"])


def targets(per_window: dict[str, Any], train_s: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, for the served loop and for its candidate: (1) beats frozen beyond one
    std (the mean +- std bands apart) from the third window on; (2) at least 20% relative
    NDCG@10 over frozen on the last window; (3) at least 90% of retrain's NDCG@10 (mean over the
    windows after the first round) at (4) under a third of its training seconds."""
    frozen = per_window["frozen"]["window_ndcg_10"]
    retrain = per_window["retrain"]["window_ndcg_10"]
    result: dict[str, Any] = {}
    for policy in ("loop", "loop_candidate"):
        ndcg = per_window[policy]["window_ndcg_10"]
        apart = [ndcg[w]["mean"] - ndcg[w]["std"] > frozen[w]["mean"] + frozen[w]["std"] for w in range(2, len(ndcg))]
        last_gain = ndcg[-1]["mean"] / frozen[-1]["mean"] - 1 if frozen[-1]["mean"] else math.nan
        after = range(1, len(ndcg))
        share = statistics.fmean(ndcg[w]["mean"] for w in after) / statistics.fmean(retrain[w]["mean"] for w in after)
        result[policy] = {
            "beats_frozen_beyond_std_from_window_3": bool(apart) and all(apart),
            "windows_apart": [w + 1 for w, ok in zip(range(2, len(ndcg)), apart, strict=True) if ok],
            "last_window_gain_over_frozen": round(last_gain, 4),
            "share_of_retrain_ndcg": round(share, 4),
        }
    seconds_share = train_s["loop"]["mean"] / train_s["retrain"]["mean"] if train_s["retrain"]["mean"] else math.nan
    result["loop_train_seconds_share_of_retrain"] = round(seconds_share, 4)
    for policy in ("loop", "loop_candidate"):
        found = result[policy]
        found["met"] = bool(
            found["beats_frozen_beyond_std_from_window_3"]
            and found["last_window_gain_over_frozen"] >= 0.2
            and found["share_of_retrain_ndcg"] >= 0.9
            and seconds_share < 1 / 3
        )
    return result


def plot(summary: dict[str, Any], path: Path) -> Path:
    """NDCG@10 per window, one line per policy (mean, one std band; dashed: the loop's candidate and
    streaming variants), one panel per churn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    churns = list(summary)
    figure, axes = plt.subplots(1, len(churns), figsize=(5 * len(churns), 4), squeeze=False, sharey=True)
    for axis, churn in zip(axes[0], churns, strict=True):
        for policy, found in summary[churn]["windows"].items():
            series = found["window_ndcg_10"]
            x = list(range(1, len(series) + 1))
            mean = [point["mean"] for point in series]
            std = [point["std"] for point in series]
            style = "-" if policy in POLICIES and policy != "loop_candidate" else "--"  # candidates, variants
            some = summary[churn].get("seeds_by_policy", {}).get(policy)
            label = policy if some is None else f"{policy} (seed{'s' * (len(some) > 1)} {', '.join(map(str, some))})"
            axis.plot(x, mean, marker="o", label=label, linestyle=style)
            axis.fill_between(x, [m - s for m, s in zip(mean, std, strict=True)],
                              [m + s for m, s in zip(mean, std, strict=True)], alpha=0.15)  # fmt: skip
        seeds = len(summary[churn]["seeds"])
        axis.set(title=f"churn x{churn} ({seeds} seed{'s' * (seeds > 1)})", xlabel="window (day)", ylabel="NDCG@10")
        axis.grid(alpha=0.3)
    # Every panel whose policies differ from the first's has its own legend (runs of some policies).
    for axis, churn in zip(axes[0], churns, strict=True):
        if axis is axes[0][0] or list(summary[churn]["windows"]) != list(summary[churns[0]]["windows"]):
            axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def log_to_mlflow(settings: Settings, result: dict[str, Any], paths: list[Path]) -> str:
    """One MLflow run with each policy's NDCG@10 per window (step = window) and the files; its run id."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    mlflow.set_experiment("benchmark-continual")
    with mlflow.start_run(run_name="continual") as run:
        mlflow.log_params({key: value for key, value in result["arguments"].items() if key != "out"})
        for churn, found in result["summary"].items():
            for policy, metrics in found["windows"].items():
                for window, point in enumerate(metrics["window_ndcg_10"], start=1):
                    if not math.isnan(point["mean"]):
                        mlflow.log_metric(f"churn_{churn}_{policy}_ndcg_10".replace(".", "p"), point["mean"], window)
        for path in paths:
            mlflow.log_artifact(str(path))
    return run.info.run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the streams and the training")
    parser.add_argument("--churn", default="1", help="comma-separated launch-rate multipliers (0 = static)")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--items", type=int, default=2_500)
    parser.add_argument("--events-per-day", type=int, default=3_000)
    parser.add_argument("--warmup-days", type=int, default=5)
    parser.add_argument(
        "--start",
        default="2026-11-01T00:00:00+00:00",
        help="the stream clock's start: fixed, so every run sends the same events",
    )
    parser.add_argument("--windows", type=int, default=7, help="days scored; a round runs before each but the first")
    parser.add_argument(
        "--warm-overrides", default="{}", help="JSON TrainConfig fields of the loop's warm starts over the round's"
    )
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers of every training run")
    parser.add_argument(
        "--policies", default=",".join(POLICIES), help="comma-separated policies to run (streaming variants by name)"
    )
    parser.add_argument(
        "--stream-chunks", type=int, default=DEFAULT_CHUNKS, help="slices of a day the streaming policies learn in turn"
    )
    parser.add_argument(
        "--streaming",
        default='{"streaming": {}}',
        help='JSON: streaming variants, name -> {"train": TrainConfig fields, "follow": FollowOptions fields} '
        "over the follow job's defaults",
    )
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--resume", action="store_true", help="keep the streams already in --out, run the rest")
    parser.add_argument("--keep", action="store_true", help="leave the private cluster and its home up")
    parser.add_argument(
        "--merge", nargs="*", default=[], help="also take the streams of these results (runs in parallel)"
    )
    parser.add_argument(
        "--summarise", action="store_true", help="run nothing: rewrite --out's summary and plot from its streams"
    )
    args = parser.parse_args()
    quiet_library_logs()
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))  # run `finally`: stop the cluster
    seeds = [int(seed) for seed in args.seeds.split(",")]
    churns = [float(churn) for churn in args.churn.split(",")]
    result = header("continual", args, seeds)
    # Parsed after the header, which records the arguments as given.
    args.policies, args.variants = chosen_policies(args.policies, args.streaming, args.stream_chunks)
    previous = json.loads(args.out.read_text()) if (args.resume or args.summarise) and args.out.exists() else {}
    result["streams"] = previous.get("streams", [])  # a resumed file keeps its streams; missing ones run
    if previous:  # and says which runs made them
        earlier = previous.get("earlier_runs", [])
        result["earlier_runs"] = [*earlier, {key: previous[key] for key in RUN_KEYS if key in previous}]
    merge_streams(result, args.merge)
    done = {(stream["churn"], stream["seed"]) for stream in result["streams"]}
    if args.summarise:
        result["summary"] = summarise(result["streams"])
        picture = plot(result["summary"], args.out.with_suffix(".png"))
        print(f"wrote {write_result(args.out, result)} and {picture}")
        return
    if args.keep:
        home = Path(tempfile.mkdtemp(prefix="streamrec-bench-continual-"))
        run(args, home, result, done, churns, seeds)
    else:
        with private_home("continual") as home:
            run(args, home, result, done, churns, seeds)


def chosen_policies(policies: str, streaming: str, chunks: int) -> tuple[list[str], list[Variant]]:
    """``--policies``' names and the ``--streaming`` variants among them; SystemExit on an unknown name."""
    try:
        variants = parse_variants(streaming)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    known = ["frozen", *ROUND_POLICIES, *(variant.name for variant in variants)]
    names = [name.strip() for name in policies.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise SystemExit(f"--policies: unknown {unknown or 'none given'}; known: {', '.join(known)}")
    if chunks < 1:
        raise SystemExit(f"--stream-chunks must be at least 1, not {chunks}")
    return names, [variant for variant in variants if variant.name in names]


def merge_streams(result: dict[str, Any], paths: list[str]) -> None:
    """Add to ``result`` the streams of each result file in ``paths`` that it lacks (seeds run in
    parallel on private clusters of their own), and to a stream both hold the policies only the
    other's run scored (``add_policies``); name each file's run in ``earlier_runs``. Two
    different runs of one stream that add no policy are refused."""
    held = {(stream["churn"], stream["seed"]): stream for stream in result["streams"]}
    for path in paths:
        other = json.loads(Path(path).read_text())
        taken = []
        for stream in other.get("streams", []):
            key = (stream["churn"], stream["seed"])
            if key in held and held[key] != stream:
                added = add_policies(held[key], stream, path)
                if not added:
                    raise SystemExit(f"{path} holds another run of the stream churn x{key[0]:g}, seed {key[1]}")
                taken.append(f"churn x{key[0]:g}, seed {key[1]}: {', '.join(added)}")
            if key not in held:
                held[key] = stream
                result["streams"].append(stream)
                taken.append(f"churn x{key[0]:g}, seed {key[1]}")
        run_header = {key: other[key] for key in RUN_KEYS if key in other}
        result.setdefault("earlier_runs", []).append({**run_header, "merged_from": path, "streams_taken": taken})


def add_policies(held: dict[str, Any], other: dict[str, Any], path: str) -> list[str]:
    """Give ``held`` the policies of ``other``, another run of the same stream, that it lacks
    (their window metrics, versions, streaming facts and training seconds); the names added.
    The runs must have sent the same events per window (the synthetic stream is deterministic
    per seed); the frozen model's NDCG@10 in both is kept per window (``frozen_check``): the
    initial models are trained again, so it shows how far apart the two starting points are.
    Raises SystemExit when the streams differ."""
    windows, others = held["windows"], other["windows"]
    sent = [[(window.get("start_ms"), window.get("events")) for window in run] for run in (windows, others)]
    same = held.get("stream") == other.get("stream") and sent[0] == sent[1]
    if not same:
        raise SystemExit(f"{path}: churn x{held['churn']:g}, seed {held['seed']} is not the same stream as held")
    new = [policy for policy in policies_of([other]) if policy not in policies_of([held])]
    if not new:
        return []
    for mine, theirs in zip(windows, others, strict=True):
        for policy in new:
            mine["metrics"][policy] = theirs["metrics"][policy]
            mine.setdefault("versions", {})[policy] = theirs.get("versions", {}).get(policy)
        if "streaming" in theirs and "streaming" not in mine:
            mine["streaming"] = theirs["streaming"]
    held["train_s"].update({name: value for name, value in other["train_s"].items() if name in new})
    if "streaming" in other and "streaming" not in held:
        held["streaming"] = other["streaming"]
    check = None
    if "frozen" in policies_of([held]) and "frozen" in policies_of([other]):
        pairs = [[w["metrics"]["frozen"].get("window_ndcg_10"), t["metrics"]["frozen"].get("window_ndcg_10")]
                 for w, t in zip(windows, others, strict=True)]  # fmt: skip
        gaps = [abs(a - b) for a, b in pairs if a is not None and b is not None]
        check = {"window_ndcg_10_held_and_merged": pairs, "max_abs_difference": round(max(gaps, default=0.0), 6)}
    merged = {"policies": new, "from": path, "initial": other["initial"], "frozen_check": check}
    held.setdefault("merged_policies", []).append(merged)
    return new


def run(
    args: argparse.Namespace,
    home: Path,
    result: dict[str, Any],
    done: set[tuple[float, int]],
    churns: list[float],
    seeds: list[int],
) -> None:
    settings = private_settings(home)
    quiet: Quiet = lambda line: None  # noqa: E731 - training and feature logs stay out of the benchmark's output
    started = time.perf_counter()
    try:
        cluster.up(settings, ["kafka", "mlflow", "ray"])
        for churn in churns:
            for seed in seeds:
                if (churn, seed) in done:
                    continue
                log(f"stream churn x{churn:g}, seed {seed}")
                result["streams"].append(run_stream(settings, args, churn, seed, quiet))
                result["summary"] = summarise(result["streams"])
                write_result(args.out, result)
        result["summary"] = summarise(result["streams"])
        result["seconds"] = round(time.perf_counter() - started, 1)
        picture = plot(result["summary"], args.out.with_suffix(".png"))
        written = write_result(args.out, result)
        result["mlflow_run_id"] = log_to_mlflow(settings, result, [written, picture])
        write_result(args.out, result)
        print(json.dumps({churn: found["targets"] for churn, found in result["summary"].items()}, indent=2))
        print(f"wrote {written} and {picture}")
    finally:
        if args.keep:
            print(f"cluster left up (MLflow {settings.mlflow.tracking_uri}); stop it: "
                  f"STREAMREC_HOME={home} .venv/bin/streamrec down")  # fmt: skip
        else:
            shutdown(settings)

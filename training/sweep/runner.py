"""`streamrec sweep`: the trials of a spec as Ray Tune trials on the settings' Ray cluster, each an
ordinary training run (``training.retrieval.runner.train``: Ray Train, early stopping, test
evaluation) logged as a child of the sweep's MLflow parent run; then the laws fitted to every
finished trial, their plots, and both logged to the parent.

Each Tune trial is a Ray Train driver (Ray Train V2's way of tuning distributed runs): it takes
no CPU itself, and its workers take ``workers x cpus_per_worker``; ``plan.concurrency`` trials
run at once. A stopped sweep is resumed from its parent run (``resume``): the trials whose child
run is done are not run again, the ones it left running are marked KILLED and run afresh.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from features.reader import FeatureVersions, latest_versions, load_examples
from infra.settings import Settings
from training.common import driver, tracking
from training.sweep import records
from training.sweep.laws import Fit, fit_all
from training.sweep.plan import PlannedTrial, SweepPlan, plan_sweep
from training.sweep.plots import plot_sweep
from training.sweep.sizing import training_flops
from training.sweep.spec import SweepError, SweepSpec

Log = Callable[[str], None]
# A Tune trial is a Ray Train driver: its workers reserve the CPUs, it needs none. Tune refuses a
# trial that asks for no resource at all, so it asks for one byte of memory.
TRIAL_DRIVER_RESOURCES: dict[str, float] = {"cpu": 0.0, "memory": 1.0}


@dataclass(frozen=True)
class SweepOutcome:
    """A sweep's parent run, its finished trials (rows of metrics), the fits per encoder, the
    plots written and the trials that failed this time."""

    parent_run_id: str
    rows: list[dict[str, Any]]
    fits: dict[str, list[Fit]]
    plots: list[Path]
    failed: list[str]
    protocol: str  # whose validation metrics the compute and performance laws fit


@dataclass(frozen=True)
class PreparedSweep:
    """A sweep about to run: its plan, its parent run (None until a new sweep starts) and the
    keys of the trials already finished."""

    plan: SweepPlan
    parent: str | None
    done: set[str]


def prepare_sweep(settings: Settings, spec: SweepSpec | None = None, *, resume: str | None = None) -> PreparedSweep:
    """Connect to Ray and plan ``spec`` at the latest feature versions, or the sweep whose parent
    run is ``resume`` at its pinned ones. Raises SweepError for a spec or sizes that cannot run."""
    import ray

    driver.connect(settings)
    if resume:
        spec, versions = records.read_parent(settings, resume)
    elif spec is None:
        raise SweepError("give a sweep spec, or the parent run id of a sweep to resume")
    else:
        versions = latest_versions(settings)
    plan = plan_sweep(settings, spec, versions, ray.cluster_resources())
    done = records.finished_keys(records.child_runs(settings, resume)) if resume else set()
    return PreparedSweep(plan, resume, done)


def run_sweep(
    settings: Settings, prepared: PreparedSweep, *, plots_dir: Path | None = None, log: Log = print
) -> SweepOutcome:
    """Run the trials of ``prepared`` not yet finished on Ray Tune, then fit, plot (to
    ``plots_dir`` too) and log the laws to the parent run (``finish_sweep``)."""
    plan = prepared.plan
    parent = prepared.parent
    if parent is None:
        parent = records.start_parent(settings, plan.spec, plan.versions, [planned.trial for planned in plan.trials])
    else:
        tracking.client(settings).update_run(parent, status="RUNNING")
        if closed := records.close_abandoned(settings, records.child_runs(settings, parent)):
            log(f"{closed} trial run(s) a stopped sweep left running marked KILLED; they run again")
    pending = [planned for planned in plan.trials if planned.trial.key not in prepared.done]
    log(
        f"sweep {parent}: {len(plan.trials)} trials ({len(plan.trials) - len(pending)} already finished), "
        f"{plan.concurrency} at a time, features {plan.versions.as_dict()}; MLflow: {tracking.ui_url(settings, parent)}"
    )
    failed = run_on_tune(settings, plan, parent, pending, log) if pending else []
    return finish_sweep(settings, parent, plots_dir, failed, plan.spec.protocol, log)


def sweep_results(settings: Settings, parent: str, protocol: str) -> tuple[list[dict[str, Any]], dict[str, list[Fit]]]:
    """The finished trials of the sweep whose parent run is ``parent`` and the laws fitted to
    them, per encoder, on validation metrics under ``protocol``."""
    rows = records.trial_rows(records.child_runs(settings, parent))
    fits = {encoder: fit_all(encoder_rows, protocol) for encoder, encoder_rows in group_by_encoder(rows).items()}
    return rows, fits


def finish_sweep(
    settings: Settings, parent: str, plots_dir: Path | None, failed: list[str], protocol: str, log: Log = print
) -> SweepOutcome:
    """Fit the laws to the sweep's finished trials, plot them (to ``plots_dir`` too) and log both
    to the parent run, which ends FINISHED (FAILED when a trial failed: resume it to retry)."""
    log(f"fitting the laws to the finished trials of sweep {parent}")
    rows, fits = sweep_results(settings, parent, protocol)
    plots: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="streamrec-sweep-") as scratch:
        logged = Path(scratch)
        if rows:
            written = plot_sweep(group_by_encoder(rows), fits, logged / "plots", protocol)
            plots = copy_plots(written, plots_dir)
        (logged / "fits.json").write_text(json.dumps(fits_document(fits), indent=2))
        (logged / "trials.json").write_text(json.dumps(rows, indent=2))
        tracking.log_artifacts(settings, parent, logged)
    tracking.log_metrics(settings, parent, {"trials_finished": float(len(rows)), **fit_metrics(fits)}, step=0)
    tracking.client(settings).set_terminated(parent, "FAILED" if failed else "FINISHED")
    return SweepOutcome(parent, rows, fits, plots, failed, protocol)


def report_sweep(
    settings: Settings, parent: str, plots_dir: Path | None = None, protocol: str | None = None
) -> SweepOutcome:
    """The sweep whose parent run is ``parent`` as MLflow has it: its finished trials and the laws
    fitted again, under ``protocol`` (default the sweep's own), plots to ``plots_dir`` when given;
    the parent run is not changed."""
    spec, _ = records.read_parent(settings, parent)  # a SweepError when it is not a sweep
    protocol = protocol or spec.protocol
    rows, fits = sweep_results(settings, parent, protocol)
    plots: list[Path] = []
    if rows and plots_dir is not None:
        with tempfile.TemporaryDirectory(prefix="streamrec-sweep-") as scratch:
            plots = copy_plots(plot_sweep(group_by_encoder(rows), fits, Path(scratch), protocol), plots_dir)
    return SweepOutcome(parent, rows, fits, plots, [], protocol)


def copy_plots(paths: list[Path], directory: Path | None) -> list[Path]:
    """``paths`` copied into ``directory`` (created if missing); [] when it is None."""
    if directory is None:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(path, directory / path.name)) for path in paths]


def group_by_encoder(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rows of each encoder, in the rows' order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["encoder"], []).append(row)
    return groups


def fits_document(fits: dict[str, list[Fit]]) -> dict[str, list[dict[str, Any]]]:
    """The fits as JSON-ready data (``fits.json`` of the parent run)."""
    return {encoder: [fit.as_dict() for fit in encoder_fits] for encoder, encoder_fits in fits.items()}


def fit_metrics(fits: dict[str, list[Fit]]) -> dict[str, float]:
    """The parent run's metrics of the fits: ``fit.<encoder>.<law>.<constant>`` (with ``_low`` and
    ``_high`` for its 95% interval) and ``fit.<encoder>.<law>.held_out_error``; finite values only."""
    metrics: dict[str, float] = {}
    for encoder, encoder_fits in fits.items():
        for fit in encoder_fits:
            prefix = f"fit.{encoder}.{fit.law}"
            for constant in fit.constants:
                values = {"": constant.value, "_low": constant.low, "_high": constant.high}
                metrics.update({f"{prefix}.{constant.name}{end}": value for end, value in values.items()})
            if fit.held_out is not None:
                metrics[f"{prefix}.held_out_error"] = fit.held_out.mean_abs_rel_error
            if fit.constants:
                metrics[f"{prefix}.rmse"] = fit.rmse
    return {key: value for key, value in metrics.items() if math.isfinite(value)}


def run_on_tune(settings: Settings, plan: SweepPlan, parent: str, pending: list[PlannedTrial], log: Log) -> list[str]:
    """Run ``pending`` as Ray Tune trials, ``plan.concurrency`` at a time; returns the labels of
    the trials that failed (their child runs end FAILED, the others go on)."""
    from ray import tune

    from training.sweep.progress import TrialProgress

    context = TrialContext(parent, plan.versions, plan.num_items, {p.trial.key: p for p in pending})
    trainable = tune.with_resources(
        tune.with_parameters(tune_trial, settings=settings, context=context), TRIAL_DRIVER_RESOURCES
    )
    storage = f"{(settings.train.storage or str(settings.checkpoint_dir)).rstrip('/')}/sweeps"
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(list(context.trials))},
        tune_config=tune.TuneConfig(max_concurrent_trials=plan.concurrency),
        run_config=tune.RunConfig(
            name=f"sweep-{parent}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=storage,
            verbose=0,
            callbacks=[TrialProgress({key: p.trial.label for key, p in context.trials.items()}, log)],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    with quiet_tune():
        results = tuner.fit()
    outcomes = [results[index] for index in range(len(results))]
    return [context.trials[(result.config or {})["trial"]].trial.label for result in outcomes if result.error]


@contextmanager
def quiet_tune() -> Iterator[None]:
    """Tune's own console output off while a sweep runs (its new output engine prints an
    experiment banner and a TensorBoard hint even at verbose 0); TrialProgress prints instead."""
    added = "RAY_AIR_NEW_OUTPUT" not in os.environ
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    try:
        yield
    finally:
        if added:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)


@dataclass(frozen=True)
class TrialContext:
    """What every Tune trial of one sweep shares: the parent run, the pinned feature versions,
    the catalogue size and the planned trials by key."""

    parent: str
    versions: FeatureVersions
    num_items: int
    trials: dict[str, PlannedTrial]


def tune_trial(config: dict[str, Any], *, settings: Settings, context: TrialContext) -> None:
    """Ray Tune's entry point of a trial: ``run_trial`` of the key ``config["trial"]``, its
    metrics reported to Tune as the trial's result."""
    from ray import tune

    tune.report(run_trial(settings, context, context.trials[config["trial"]]))


def run_trial(settings: Settings, context: TrialContext, planned: PlannedTrial) -> dict[str, float]:
    """Train one trial as an ordinary run (child of the parent run, not registered), then log
    its sizes, tokens, FLOPs and validation cross-entropy; returns its metrics."""
    from training.common.scoring import logit_scale
    from training.retrieval.evaluation import cross_entropy
    from training.retrieval.retriever import Retriever
    from training.retrieval.runner import train

    trial, config = planned.trial, planned.trial.config
    outcome = train(
        settings,
        config,
        workers=trial.workers,
        versions=context.versions,
        tags=records.trial_tags(context.parent, trial),
        register=False,
        log=lambda line: print(f"[{trial.label}] {line}", flush=True),  # the trial's log in Ray
    )
    with tempfile.TemporaryDirectory(prefix="streamrec-sweep-trial-") as scratch:
        directory = tracking.client(settings).download_artifacts(outcome.run_id, "model", scratch)
        retriever = Retriever.from_directory(directory)
    validation = load_examples(settings, "validation", context.versions, max_len=config.encoder.max_len)
    epochs = len(outcome.history)
    tokens_seen = planned.data.tokens * epochs
    metrics = {
        "non_embedding_params": float(planned.size.non_embedding),
        "embedding_params": float(planned.size.embedding),
        "train_users": float(planned.data.users),
        "train_tokens": float(planned.data.tokens),
        "data_apen": planned.data.apen,
        "epochs_run": float(epochs),
        "tokens_seen": float(tokens_seen),
        "train_flops": training_flops(config, planned.size, context.num_items, planned.data.mean_length, tokens_seen),
        "val_cross_entropy": cross_entropy(
            retriever,
            validation,
            logit_scale(config.encoder.scoring, config.temperature),
            batch_size=config.eval_batch_size,
        ),
    }
    records.finish_trial(settings, outcome.run_id, trial, metrics)
    return {**outcome.metrics, **metrics}

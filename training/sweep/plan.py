"""A sweep's plan before anything runs: each trial with its data and sizes, the trials the Ray
cluster cannot hold (refused, each named with why), and how many trials run at once."""

from __future__ import annotations

from dataclasses import dataclass

from features.reader import FeatureVersions, load_examples
from infra.settings import Settings
from training.common.device import resolve_device
from training.sweep.data import DataStats, data_stats
from training.sweep.sizing import GIB, ModelSize, model_size, worker_memory_bytes
from training.sweep.spec import SweepError, SweepSpec, Trial


@dataclass(frozen=True)
class PlannedTrial:
    """A trial, the data it trains on, its model's sizes, its memory estimate (all workers) and
    the GPUs it takes (one per worker on cuda, else 0)."""

    trial: Trial
    data: DataStats
    size: ModelSize
    memory_bytes: int
    gpus: int = 0


@dataclass(frozen=True)
class SweepPlan:
    """Every trial of a spec, planned, and the trials that may run at once."""

    spec: SweepSpec
    versions: FeatureVersions
    num_items: int
    trials: list[PlannedTrial]
    concurrency: int

    def trial(self, key: str) -> PlannedTrial:
        return next(planned for planned in self.trials if planned.trial.key == key)


def plan_sweep(
    settings: Settings, spec: SweepSpec, versions: FeatureVersions, resources: dict[str, float]
) -> SweepPlan:
    """Plan every trial of ``spec`` on the train split at ``versions`` and check them against the
    cluster's ``resources`` (``ray.cluster_resources()``); a SweepError names each trial that
    cannot fit and why, before any starts."""
    trials = spec.trials_to_run()
    splits = {
        max_len: load_examples(settings, "train", versions, max_len=max_len)
        for max_len in sorted({trial.config.encoder.max_len for trial in trials})
    }
    num_items = next(iter(splits.values())).num_items
    stats: dict[tuple[int, float], DataStats] = {}
    planned = []
    for trial in trials:
        point = (trial.config.encoder.max_len, trial.config.data_fraction)
        if point not in stats:
            stats[point] = data_stats(splits[point[0]], point[1])
        size = model_size(trial.config.encoder, num_items)
        memory = trial.workers * worker_memory_bytes(trial.config, size, num_items, trial.workers)
        device = resolve_device(trial.config.device, use_gpu_setting=settings.train.use_gpu,
                                gpus_offered=resources.get("GPU", 0.0), workers=trial.workers)  # fmt: skip
        planned.append(PlannedTrial(trial, stats[point], size, memory, trial.workers if device == "cuda" else 0))
    concurrency = fit_to_cluster(planned, settings.train.cpus_per_worker, resources)
    if spec.max_concurrent:
        concurrency = min(concurrency, spec.max_concurrent)
    return SweepPlan(spec, versions, num_items, planned, concurrency)


def fit_to_cluster(trials: list[PlannedTrial], cpus_per_worker: float, resources: dict[str, float]) -> int:
    """How many of ``trials`` the cluster runs at once (at least 1); a SweepError naming every
    trial whose workers need more CPUs, GPUs or memory than the whole cluster offers, or that has
    no training data at its fraction."""
    cpus, gpus, memory = resources.get("CPU", 0.0), resources.get("GPU", 0.0), resources.get("memory", 0.0)
    problems = []
    for planned in trials:
        trial, needs_cpus = planned.trial, planned.trial.workers * cpus_per_worker
        if needs_cpus > cpus:
            problems.append(
                f"trial {trial.label}: {trial.workers} worker(s) x {cpus_per_worker:g} CPU need {needs_cpus:g} CPUs, "
                f"the cluster offers {cpus:g} (fewer workers, or lower STREAMREC_TRAIN_CPUS_PER_WORKER)"
            )
        if planned.gpus > gpus:
            problems.append(
                f"trial {trial.label}: {trial.workers} worker(s) on cuda need {planned.gpus} GPUs, the cluster offers "
                f"{gpus:g} (device cpu, or fewer workers)"
            )
        if planned.memory_bytes > memory:
            size, config = planned.size, trial.config
            problems.append(
                f"trial {trial.label}: needs about {planned.memory_bytes / GIB:.1f} GiB ({size.non_embedding:,} "
                f"non-embedding and {size.embedding:,} embedding parameters, batch {config.batch_size} x max_len "
                f"{config.encoder.max_len}), the cluster offers {memory / GIB:.1f} GiB"
            )
        if planned.data.users == 0:
            problems.append(f"trial {trial.label}: no training users at data fraction {trial.config.data_fraction:g}")
    if problems:
        raise SweepError("trials that cannot run on this Ray cluster:\n  " + "\n  ".join(problems))
    by_cpu = min(int(cpus // (planned.trial.workers * cpus_per_worker)) for planned in trials)
    by_memory = int(memory // max(planned.memory_bytes for planned in trials))
    by_gpu = min((int(gpus // planned.gpus) for planned in trials if planned.gpus), default=by_cpu)
    return max(1, min(by_cpu, by_memory, by_gpu))

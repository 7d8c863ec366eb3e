"""GPU benchmark: training throughput (sequences/s) of the largest model points on a GPU against
the CPU path, in each precision and HSTU attention, within a fixed time budget.

Two levels, each at every ``--points`` model point (encoder:dim:blocks:max_len; or with ``--spec``
the largest trial of each encoder of a ``streamrec sweep`` spec, its training fields included), on synthetic
full-length histories over ``--items`` items (the sampled logQ loss, 128 negatives, batch 128):

* ``encoder``: the plain model's optimizer step (``benchmarks.train.plain_loop.plain_step``:
  item rows in an ``nn.Embedding``, one Adam), on cpu in float32 with the reference attention
  (the CPU path as it trains today) and on cuda in fp32, bf16, and bf16 with HSTU's chunked
  attention; the GPU's peak memory of each, and on any device the memory a step saves for backward.
* ``train``: a Ray Train worker's epoch (``training.retrieval.worker._train_epoch``) on a
  process group of one, without Ray: the item table sharded by DMP and trained by FBGEMM's
  kernels, as the run's device resolves them (cpu: gloo, row-wise Adagrad, fp32; cuda: NCCL,
  fused Adam, bf16), the same step ``streamrec train`` runs on every worker.

Each measurement runs ``--warmup`` steps, then at most ``--steps`` steps or ``--seconds``
seconds; a GPU out of memory is recorded, not fatal. ``--dry-run`` runs everything on CPU with
tiny points (the cuda paths become cpu ones), to check the benchmark where there is no GPU; with
``--points`` it measures the CPU's own bf16 and chunked attention.

    python -m benchmarks.gpu [--dry-run] [--points hstu:256:4:200,... | --spec SWEEP.yaml] [--out PATH]

``benchmarks/gpu/run.sh`` runs it on a GPU machine; it writes benchmarks/results/gpu.json (or
``--out``) and prints its path.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.gpu.probe import probe
from benchmarks.harness import RESULTS, header, log, write_result
from benchmarks.train.plain_loop import plain_step
from features.examples import SequenceExamples
from ingestion.schema import ACTION_IDS
from training.common.config import EncoderConfig
from training.common.device import Device, Precision, process_group_backend
from training.retrieval.config import TrainConfig
from training.retrieval.model import RetrievalModel

RESULT = RESULTS / "gpu.json"
DRY_RESULT = RESULTS / "gpu_dry_run.json"
# The largest points of a scaling sweep on one GPU: width and depth at the reference length, and
# HSTU at a long history, where its (L x L) attention scores dominate memory.
DEFAULT_POINTS = "hstu:256:4:200,sasrec:256:4:200,hstu:256:4:1024"
DRY_POINTS = "hstu:16:1:24,sasrec:16:1:24"


@dataclass(frozen=True)
class TrainPath:
    """One way of training a point: the device, the forward's precision and HSTU's attention."""

    device: Device
    precision: Precision
    attention: str = "reference"

    @property
    def name(self) -> str:
        return f"{self.device}_{self.precision}" + ("_chunked" if self.attention == "chunked" else "")


def parse_points(text: str) -> list[EncoderConfig]:
    """``kind:dim:blocks:max_len,...`` as encoder configs (a clear error for anything else)."""
    points = []
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        fields = part.split(":")
        if len(fields) != 4 or not all(field.isdigit() for field in fields[1:]):
            raise SystemExit(f"--points: {part!r} is not encoder:dim:blocks:max_len, e.g. hstu:256:4:200")
        kind, dim, blocks, max_len = fields[0], *map(int, fields[1:])
        points.append(EncoderConfig(kind=kind, dim=dim, num_blocks=blocks, max_len=max_len))
    if not points:
        raise SystemExit("--points names no point")
    return points


def spec_configs(path: Path) -> list[TrainConfig]:
    """The largest trial of each encoder of the sweep spec at ``path`` (most non-embedding
    parameters, then the longest history), with the spec's shared training fields."""
    from training.sweep.cli import spec_from
    from training.sweep.sizing import model_size
    from training.sweep.spec import SweepError

    try:
        trials = spec_from(path, {}, None, None, None, None).trials_to_run()
    except SweepError as error:
        raise SystemExit(f"--spec: {error}") from error
    largest: dict[str, TrainConfig] = {}
    for trial in trials:
        encoder = trial.config.encoder
        size = (model_size(encoder, 0).non_embedding, encoder.max_len)
        best = largest.get(encoder.kind)
        if best is None or size > (model_size(best.encoder, 0).non_embedding, best.encoder.max_len):
            largest[encoder.kind] = trial.config
    return list(largest.values())


def synthetic_examples(rows: int, max_len: int, num_items: int, seed: int) -> SequenceExamples:
    """``rows`` full-length histories of random items (views, a minute apart) and their next items."""
    rng = np.random.default_rng(seed)
    items = rng.integers(1, num_items + 1, size=(rows, max_len + 1))
    start = rng.integers(1_600_000_000_000, 1_700_000_000_000, size=(rows, 1))
    return SequenceExamples(
        user_ids=np.array([f"u{row}" for row in range(rows)]),
        item_indices=items[:, :max_len],
        action_ids=np.full((rows, max_len), ACTION_IDS["view"]),
        timestamps=start + np.arange(max_len, dtype=np.int64) * 60_000,
        lengths=np.full(rows, max_len),
        targets=items[:, max_len],
        num_items=num_items,
    )


def paths(dry_run: bool, gpu: bool, kind: str) -> list[TrainPath]:
    """The paths a point is measured on: the CPU path (fp32, reference attention), then the GPU's
    in fp32, bf16 and (HSTU) bf16 with chunked attention; a dry run stays on CPU, with bf16 and
    (HSTU) fp32 with chunked attention, so each change is measured apart from the other."""
    measured = [TrainPath("cpu", "fp32")]
    if gpu and not dry_run:
        measured += [TrainPath("cuda", "fp32"), TrainPath("cuda", "bf16")]
        measured += [TrainPath("cuda", "bf16", "chunked")] if kind == "hstu" else []
    elif dry_run:
        measured += [TrainPath("cpu", "bf16")]
        measured += [TrainPath("cpu", "fp32", "chunked")] if kind == "hstu" else []
    return measured


def _synchronise(device: Device) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_steps(step: Callable[[], object], device: Device, warmup: int, steps: int, seconds: float) -> dict[str, Any]:
    """``warmup`` untimed calls of ``step``, then calls until ``steps`` or ``seconds``: steps/s."""
    for _ in range(warmup):
        step()
    _synchronise(device)
    done, started = 0, time.perf_counter()
    while done < steps and (done == 0 or time.perf_counter() - started < seconds):
        step()
        done += 1
    _synchronise(device)
    elapsed = time.perf_counter() - started
    return {"steps": done, "seconds": round(elapsed, 3), "step_ms": round(1000 * elapsed / done, 2)}


@contextmanager
def measured(device: Device) -> Iterator[dict[str, Any]]:
    """A record that gets the GPU's peak memory of the block, or the error that stopped it
    (a GPU out of memory is a result of the point, not a failure of the benchmark)."""
    record: dict[str, Any] = {}
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        yield record
    except torch.cuda.OutOfMemoryError as error:
        record["error"] = f"out of memory: {str(error).splitlines()[0]}"
    if device == "cuda":
        record["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        torch.cuda.empty_cache()


def saved_for_backward_mib(step: Callable[[], object]) -> float:
    """MiB of the tensors one call of ``step`` keeps for its backward pass (each storage once):
    the activation memory a step holds at its peak, on any device. A block that activation
    checkpointing recomputes in backward counts as its inputs only."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return round(sum(storages.values()) / 2**20, 3)


def encoder_level(config: TrainConfig, path: TrainPath, args: argparse.Namespace) -> dict[str, Any]:
    """Sequences/s of the plain model's training step on ``path``, and the memory it saves for backward."""
    encoder = config.encoder.model_copy(update={"hstu_attention": path.attention})
    torch.manual_seed(config.seed)
    model = RetrievalModel(encoder, args.items).to(path.device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
    generator = torch.Generator().manual_seed(config.seed)
    examples = synthetic_examples(config.batch_size, encoder.max_len, args.items, config.seed)
    batch = next(examples.batches(config.batch_size))
    with measured(path.device) as record:
        step = lambda: plain_step(  # noqa: E731
            model, optimizer, batch, config, generator, device=path.device, precision=path.precision
        )
        record["saved_for_backward_mib"] = saved_for_backward_mib(step)
        record.update(timed_steps(step, path.device, args.warmup, args.steps, args.seconds))
        record["sequences_per_s"] = round(config.batch_size * record["steps"] / record["seconds"], 1)
    return record


@contextmanager
def process_group(device: Device) -> Iterator[None]:
    """A torch.distributed group of this process alone, as Ray Train makes on each worker."""
    import torch.distributed as dist

    from infra.processes import free_port

    dist.init_process_group(process_group_backend(device), init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        yield
    finally:
        dist.destroy_process_group()


def train_level(config: TrainConfig, path: TrainPath, args: argparse.Namespace, rows: int) -> dict[str, Any]:
    """Sequences/s of a Ray Train worker's epoch over ``rows`` histories on ``path`` (after a
    one-batch warm-up epoch)."""
    from features.reader import FeatureVersions
    from infra.settings import get_settings
    from training.common.sharding import dense_optimizer, shard_model
    from training.retrieval.sharded_model import ShardedRetrievalModel
    from training.retrieval.worker import TrainJob, _train_epoch

    config = config.model_copy(update={"device": path.device, "precision": path.precision})
    device = torch.device(path.device)
    if path.device == "cuda":
        torch.cuda.set_device(0)
    with process_group(path.device), tempfile.TemporaryDirectory(prefix="streamrec-gpu-bench-") as home:
        torch.manual_seed(config.seed)
        model = ShardedRetrievalModel(config.encoder, args.items, table_device=torch.device("meta"))
        dmp = shard_model(model, config.table, device, 1, dense_lr=config.lr, betas=config.betas, seed=config.seed)
        optimizer = dense_optimizer(dmp, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
        job = TrainJob(get_settings(home=Path(home)), config, FeatureVersions(item_vocab=1, user_sequences=1),
                       "gpu-bench", use_gpu=path.device == "cuda")  # fmt: skip
        warmup = synthetic_examples(config.batch_size, config.encoder.max_len, args.items, config.seed + 1)
        shard = synthetic_examples(rows, config.encoder.max_len, args.items, config.seed)
        with measured(path.device) as record:
            _train_epoch(dmp, optimizer, warmup, job, 1, 0, device)
            _synchronise(path.device)
            started = time.perf_counter()
            loss = _train_epoch(dmp, optimizer, shard, job, 2, 0, device)
            _synchronise(path.device)
            seconds = time.perf_counter() - started
            table_optimizer = config.table_optimizer(path.device == "cuda")[0]
            record.update(rows=rows, seconds=round(seconds, 3), loss=round(loss, 4), table_optimizer=table_optimizer,
                          backend=process_group_backend(path.device))  # fmt: skip
            record["sequences_per_s"] = round(rows / seconds, 1)
    return record


def _train_rows(args: argparse.Namespace, batch_size: int, encoder_rate: float | None) -> int:
    """Histories of the train level's timed epoch: ``--steps`` batches, fewer where the encoder
    level's rate on the same path says they would take longer than ``--seconds``."""
    rows = batch_size * args.steps
    if encoder_rate is not None:
        rows = min(rows, int(encoder_rate * args.seconds))
    return max(rows, batch_size)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every level at every point on every path; the result with speed-ups over the CPU path."""
    environment = probe()
    gpu = bool(environment["torch"]["cuda_available"])
    if not gpu and not args.dry_run:
        raise SystemExit("no CUDA GPU: torch.cuda.is_available() is False; use --dry-run to check the benchmark on CPU")
    levels = [level for level in args.levels.split(",") if level]
    unknown = set(levels) - {"encoder", "train"}
    if unknown:
        raise SystemExit(f"--levels: unknown {sorted(unknown)}; known: encoder, train")
    if "train" in levels and not environment["levels"]["train"]:
        log(f"train level skipped: this machine lacks {environment['lacks']}")
        levels.remove("train")
    result: dict[str, Any] = {**header("gpu", args, [0]), "environment": environment, "levels": levels, "rows": []}
    if args.spec:
        given = {"batch_size": args.batch_size} if args.batch_size else {}  # else the spec's own
        configs = [config.model_copy(update=given) for config in spec_configs(args.spec)]
    else:
        configs = [TrainConfig(encoder=encoder, batch_size=args.batch_size) for encoder in parse_points(args.points)]
    for config in configs:
        encoder = config.encoder
        point = f"{encoder.kind}:{encoder.dim}:{encoder.num_blocks}:{encoder.max_len}"
        rates: dict[tuple[str, str], float] = {}  # (level, path) -> sequences/s
        for level in levels:
            for path in paths(args.dry_run, gpu, encoder.kind):
                if level == "train" and path.attention == "chunked":
                    continue  # the train level runs the point's own encoder config
                log(f"{level} {point} {path.name} ...")
                if level == "encoder":
                    record = encoder_level(config, path, args)
                else:
                    record = train_level(
                        config, path, args, _train_rows(args, config.batch_size, rates.get(("encoder", path.name)))
                    )
                if "sequences_per_s" in record:
                    rates[level, path.name] = record["sequences_per_s"]
                row = {"level": level, "point": point, "path": path.name, **record}
                log(f"  {row.get('sequences_per_s', row.get('error'))} sequences/s")
                result["rows"].append(row)
                write_result(args.out, result)  # what has run so far survives a killed run
            cpu = rates.get((level, "cpu_fp32"))
            if cpu:
                result.setdefault("speedup_over_cpu", {})[f"{level} {point}"] = {
                    name: round(rate / cpu, 2)
                    for (of, name), rate in rates.items()
                    if of == level and name != "cpu_fp32"
                }
    write_result(args.out, result)
    return result


def summarise(result: dict[str, Any]) -> None:
    """A table of sequences/s and peak GPU memory per level, point and path."""
    print(f"{'level':8} {'point':20} {'path':18} {'seq/s':>10} {'peak MiB':>9} {'saved MiB':>9}")
    for row in result["rows"]:
        rate = row.get("sequences_per_s", row.get("error", "-"))
        peak, saved = row.get("peak_memory_mib", "-"), row.get("saved_for_backward_mib", "-")
        print(f"{row['level']:8} {row['point']:20} {row['path']:18} {rate!s:>10} {peak!s:>9} {saved!s:>9}")
    for key, speedups in result.get("speedup_over_cpu", {}).items():
        print(f"speed-up over cpu_fp32, {key}: {speedups}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU only, tiny points: check the benchmark itself")
    parser.add_argument("--points", help=f"encoder:dim:blocks:max_len,... (default {DEFAULT_POINTS})")
    parser.add_argument(
        "--spec", type=Path, help="a `streamrec sweep` spec: its largest trial of each encoder instead of --points"
    )
    parser.add_argument("--levels", default="encoder,train", help="encoder, train or both (default both)")
    parser.add_argument("--items", type=int, help="catalogue size (default 100000; dry run 1000)")
    parser.add_argument("--batch-size", type=int, help="histories per step (default 128; dry run 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each measurement")
    parser.add_argument("--steps", type=int, help="most timed steps per measurement (default 20; dry run 3)")
    parser.add_argument("--seconds", type=float, default=10.0, help="most timed seconds per measurement")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, help=f"result file (default {RESULT}; dry run {DRY_RESULT})")
    args = parser.parse_args(argv)
    dry = {"points": DRY_POINTS, "items": 1000, "batch_size": 8, "steps": 3, "out": DRY_RESULT}
    full = {"points": DEFAULT_POINTS, "items": 100_000, "batch_size": 128, "steps": 20, "out": RESULT}
    if args.spec:
        del dry["batch_size"], full["batch_size"]  # a spec's trials have their own
    for key, value in (dry if args.dry_run else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    result = run(args)
    summarise(result)
    print(args.out)

"""What TorchRec 1.8 offers a streaming follow job on CPU with gloo (issue 27, items 2 and 3).

Two questions, answered by running the mechanisms, not by reading their docs:

* **Changed rows.** Does ``torchrec.distributed.model_tracker`` (the delta tracker DMP attaches
  with ``init_torchrec_delta_tracker``) work on the project's sharded item table (built by
  ``training.common.sharding.shard_model``: row-wise or table-wise, fused row-wise Adagrad, or
  Adam on the dense kernel) on 1 and 2 gloo processes? Its report is compared with the ids of
  the batches the steps trained on and with the rows whose values actually changed; its cost
  per step is timed against an identical model without it (steps alternated, so contention on
  the machine hits both alike).
* **New items.** Do the managed-collision modules (``MCHManagedCollisionModule`` in a
  ``ManagedCollisionEmbeddingCollection``, sharded by DMP) admit raw ids first seen after
  training started, keep their rows stable, evict when full, and can serving map a raw id to
  the same row? Compared with the alternative: a plain table with headroom rows, new ids
  taking the next free rows (the vocabulary delta), whose cost is that of a larger table.

Run: ``.venv/bin/python -m benchmarks.streaming.probe_torchrec`` (a few minutes on 2 cores);
writes ``benchmarks/results/torchrec_streaming_probe.json``. Every check runs in its own
spawned gloo process group on localhost; a check that fails records its error verbatim.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchrec
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.mc_embedding import ManagedCollisionEmbeddingCollectionSharder
from torchrec.distributed.model_tracker.types import DeltaTrackerConfig, TrackingMode
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingCollection
from torchrec.modules.mc_modules import (
    DistanceLFU_EvictionPolicy,
    ManagedCollisionCollection,
    MCHManagedCollisionModule,
)
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from infra.processes import free_port
from training.common.config import EncoderConfig, TableConfig
from training.common.loss import retrieval_loss
from training.common.sharded_table import CANDIDATES, HISTORY, TABLE_WEIGHT, lookup_input, table_width
from training.common.sharding import TABLE_OPTIMIZERS, catalog_embeddings, dense_optimizer, shard_model
from training.retrieval.config import TrainConfig
from training.retrieval.sharded_model import ShardedRetrievalModel

RESULT = Path("benchmarks/results/torchrec_streaming_probe.json")
TRACKER_FQN = "item_table.embeddings.item"  # the state-dict prefix the tracker keys the item table by
MC_TABLE = "item"


@dataclass(frozen=True)
class ProbeConfig:
    """Sizes of the probe: small enough for a few minutes on 2 shared cores."""

    rows: int = 10_000  # items of the table (row 0 is padding)
    dim: int = 64
    batch: int = 32  # histories per step and rank
    max_len: int = 20
    negatives: int = 64
    steps: int = 4  # training steps per tracked window
    timed_steps: int = 30  # steps per model and block in the alternated timings
    seed: int = 0


@dataclass(frozen=True)
class TrackerCase:
    """One configuration of the delta-tracker check."""

    world: int
    sharding: str
    optimizer: str  # the table optimizer of training.common.sharding (rowwise_adagrad: fused; adam: dense kernel)
    mode: str  # TrackingMode value

    @property
    def name(self) -> str:
        return f"tracker/{self.mode}/{self.sharding}/{self.optimizer}/world{self.world}"


TRACKER_CASES = (
    TrackerCase(1, "row_wise", "rowwise_adagrad", "id_only"),
    TrackerCase(2, "row_wise", "rowwise_adagrad", "id_only"),
    TrackerCase(2, "table_wise", "rowwise_adagrad", "id_only"),
    TrackerCase(2, "row_wise", "adam", "id_only"),
    TrackerCase(2, "row_wise", "rowwise_adagrad", "embedding"),
    TrackerCase(2, "row_wise", "rowwise_adagrad", "rowwise_adagrad"),
)


# ----------------------------------------------------------------------------------------------
# Running a check on spawned gloo processes


def run_spawned(check: Callable[..., dict[str, Any]], world: int, *args: Any) -> list[dict[str, Any]]:
    """``check(rank, world, *args)`` on ``world`` gloo processes; each rank's result dict, or
    ``{"ok": False, "error": ..., "traceback": ...}`` for a rank whose check raised."""
    with tempfile.TemporaryDirectory(prefix="probe-torchrec-") as scratch:
        try:
            mp.spawn(_rank_main, args=(world, free_port(), scratch, check, args), nprocs=world)
        except Exception as error:  # a rank that died without writing its result
            return [{"ok": False, "error": f"spawn failed: {error!r}"}]
        results = []
        for rank in range(world):
            path = Path(scratch) / f"rank{rank}.json"
            results.append(json.loads(path.read_text()) if path.exists() else {"ok": False, "error": "no result"})
        return results


def _rank_main(rank: int, world: int, port: int, scratch: str, check: Callable[..., dict], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # 2 ranks on 2 shared cores
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = {"ok": True, **check(rank, world, *args)}
    except Exception as error:
        result = {"ok": False, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    Path(scratch, f"rank{rank}.json").write_text(json.dumps(result, default=_jsonable))
    # No barrier: a rank whose check failed must not wait for one that is still in a collective.
    dist.destroy_process_group()


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, set):
        return sorted(value)
    raise TypeError(f"not JSON: {type(value)}")


# ----------------------------------------------------------------------------------------------
# Shared pieces


def local_rows(table: ShardedTensor) -> list[tuple[int, torch.Tensor]]:
    """(first global row, shard) of every shard of ``table`` this rank holds."""
    return [(shard.metadata.shard_offsets[0], shard.tensor) for shard in table.local_shards()]


def snapshot(dmp: DistributedModelParallel) -> list[tuple[int, torch.Tensor]]:
    """A copy of this rank's shards of the item table, read directly (no lookup, so no tracker sees it)."""
    return [(first, rows.detach().clone()) for first, rows in local_rows(dmp.state_dict()[TABLE_WEIGHT])]


def changed_rows(before: list[tuple[int, torch.Tensor]], dmp: DistributedModelParallel) -> set[int]:
    """Global ids of this rank's rows whose values differ from ``before``."""
    changed: set[int] = set()
    for (first, old), (_, new) in zip(before, local_rows(dmp.state_dict()[TABLE_WEIGHT]), strict=True):
        changed.update((first + torch.nonzero((old != new).any(dim=1)).flatten()).tolist())
    return changed


def all_union(ids: set[int]) -> set[int]:
    """The union over ranks of every rank's ``ids`` (a collective)."""
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, sorted(ids))
    return {i for part in everyone for i in part}


def batches(config: ProbeConfig, generator: torch.Generator, high: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless retrieval batches over item ids 1..high (the project's batch layout)."""
    while True:
        lengths = torch.randint(2, config.max_len + 1, (config.batch,), generator=generator)
        yield {
            "item_indices": torch.randint(1, high + 1, (config.batch, config.max_len), generator=generator),
            "action_ids": torch.randint(2, 7, (config.batch, config.max_len), generator=generator),
            "timestamps": torch.arange(config.batch * config.max_len).view(config.batch, config.max_len) * 60_000,
            "lengths": lengths,
            "valid": torch.ones(config.batch, dtype=torch.bool),
        }


def train_step(
    dmp: DistributedModelParallel,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    negatives: torch.Tensor,
) -> set[int]:
    """One training step as ``training.retrieval.worker`` takes it; returns the item ids it looked up."""
    length = int(batch["lengths"].max())
    lookups = lookup_input(batch["item_indices"][:, :length], batch["lengths"], negatives)
    hidden, history_emb, negative_emb = dmp(
        lookups, batch["action_ids"][:, :length], batch["timestamps"][:, :length], batch["lengths"]
    )
    terms = retrieval_loss(
        hidden, history_emb, batch, negatives, negative_emb, temperature=0.1, in_batch_negatives=4, ntr_weight=0.1
    )
    optimizer.zero_grad()
    terms.total.backward()
    optimizer.step()
    return set(lookups.values().tolist())


def project_model(
    config: ProbeConfig, world: int, sharding: str, optimizer: str
) -> tuple[DistributedModelParallel, torch.optim.Optimizer]:
    """The project's sharded retrieval model (``shard_model``) and its dense optimizer."""
    table = TableConfig(sharding=sharding, embedding_optimizer=optimizer)
    train = TrainConfig(encoder=EncoderConfig(dim=config.dim, max_len=config.max_len, num_blocks=1), table=table)
    model = ShardedRetrievalModel(train.encoder, config.rows, torch.device("meta"))
    dmp = shard_model(
        model, train.table, torch.device("cpu"), world, dense_lr=train.lr, betas=train.betas, seed=config.seed
    )
    return dmp, dense_optimizer(dmp, lr=train.lr, betas=train.betas, weight_decay=train.weight_decay)


# ----------------------------------------------------------------------------------------------
# (a) the delta tracker


def tracker_check(rank: int, world: int, config: ProbeConfig, case: TrackerCase) -> dict[str, Any]:
    """Attach the tracker, train two windows of steps, compare what it reports with the batches."""
    torch.manual_seed(config.seed)
    dmp, optimizer = project_model(config, world, case.sharding, case.optimizer)
    out: dict[str, Any] = {"rank": rank}
    shards = [(first, tuple(rows.shape)) for first, rows in local_rows(dmp.state_dict()[TABLE_WEIGHT])]
    out["local_shards"] = shards
    tracker = dmp.init_torchrec_delta_tracker(
        DeltaTrackerConfig(tracking_mode=TrackingMode(case.mode), delete_on_read=True)
    )
    out["tracked_fqns"] = sorted(tracker.fqn_to_feature_names())
    generator = torch.Generator().manual_seed(config.seed * 100 + rank)
    data = batches(config, generator, config.rows)
    windows = []
    for window in range(2):
        before = snapshot(dmp)
        looked_up: set[int] = set()
        for _ in range(config.steps):
            negatives = torch.randint(1, config.rows + 1, (config.negatives,), generator=generator)
            looked_up |= train_step(dmp, optimizer, next(data), negatives)
        changed = changed_rows(before, dmp)
        delta = tracker.get_unique()
        rows = delta.get(TRACKER_FQN)
        local_ids = rows.ids.tolist() if rows is not None else []
        # The tracker reports the ids the rank's lookup received: offsets into its shard (row-wise
        # input distribution subtracts the shard's first row). A rank holding one shard maps them back.
        first = shards[0][0] if shards else 0
        tracked = {first + i for i in local_ids}
        result: dict[str, Any] = {
            "window": window,
            "fqns": sorted(delta),
            "local_ids": len(local_ids),
            "local_id_range": [min(local_ids), max(local_ids)] if local_ids else None,
        }
        if rows is not None and rows.states is not None:
            result["states_shape"] = list(rows.states.shape)
            if case.mode == "embedding":
                # EMBEDDING mode keeps each row's first value in the window: the value before the window.
                old = torch.cat([values for _, values in before])
                ids = torch.tensor(local_ids, dtype=torch.long)
                result["states_equal_rows_before_window"] = bool(
                    torch.equal(rows.states.view(len(local_ids), -1), old[ids][:, : rows.states.numel() // len(ids)])
                )
        everyone_batches, everyone_tracked, everyone_changed = (
            all_union(looked_up),
            all_union(tracked),
            all_union(changed),
        )
        result.update(
            batch_ids=len(everyone_batches),
            tracked_ids=len(everyone_tracked),
            changed_ids=len(everyone_changed),
            tracked_equals_batch_ids=everyone_tracked == everyone_batches,
            changed_subset_of_batch_ids=everyone_changed <= everyone_batches,
            batch_ids_missed_by_tracker=len(everyone_batches - everyone_tracked),
            tracked_not_in_batches=len(everyone_tracked - everyone_batches),
            batch_ids_unchanged=len(everyone_batches - everyone_changed),
        )
        windows.append(result)
    out["windows"] = windows
    # A publish with no step since the last one (an idle stream).
    try:
        idle = tracker.get_unique().get(TRACKER_FQN)
        out["idle_get_unique"] = f"ok: {0 if idle is None else idle.ids.numel()} ids"
    except Exception as error:  # the empty store's torch.cat
        out["idle_get_unique"] = f"{type(error).__name__}: {error}"
    # A read of every row through the sharded lookup between two steps (what evaluation and
    # index building do): the tracker cannot tell it from training.
    first = shards[0][0] if shards else 0
    looked_up = set()
    for read_catalogue in (True, False):
        negatives = torch.randint(1, config.rows + 1, (config.negatives,), generator=generator)
        looked_up |= train_step(dmp, optimizer, next(data), negatives)
        if read_catalogue:
            catalog_embeddings(dmp, config.rows + 1)
    polluted = tracker.get_unique().get(TRACKER_FQN)
    reported = set((polluted.ids + first).tolist()) if polluted is not None else set()
    out["catalogue_read_between_steps"] = {
        "batch_ids": len(all_union(looked_up)),
        "tracked_ids": len(all_union(reported)),
        "rows": config.rows + 1,
    }
    return out


def spread(values: list[float] | np.ndarray) -> dict[str, float]:
    """Median and quartiles of ``values`` (ms), rounded."""
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"median": round(float(median), 3), "q1": round(float(q1), 3), "q3": round(float(q3), 3)}


def tracker_timing(rank: int, world: int, config: ProbeConfig, sharding: str) -> dict[str, Any]:
    """The tracker's cost per step: the time spent in its post-lookup hook, and the step time of
    the same model with and without an ID_ONLY tracker (steps alternated, the same batch for
    both; the difference is taken step by step, since the machine's load swamps medians),
    in blocks whose batches come from different seeds; and the cost of a publish: the tracker's
    ``get_unique`` vs the union of the batches' ids over ranks."""
    torch.manual_seed(config.seed)
    plain, plain_opt = project_model(config, world, sharding, "rowwise_adagrad")
    tracked, tracked_opt = project_model(config, world, sharding, "rowwise_adagrad")
    tracker = tracked.init_torchrec_delta_tracker(DeltaTrackerConfig(tracking_mode=TrackingMode.ID_ONLY))
    hook_s: list[float] = []

    def timed_record(*args: Any) -> None:
        start = time.perf_counter()
        tracker.record_lookup(*args)
        hook_s.append(time.perf_counter() - start)

    for module in tracker.get_tracked_modules().values():
        module.register_post_lookup_tracker_fn(timed_record)
    blocks = []
    for block in range(TIMING_BLOCKS):
        generator = torch.Generator().manual_seed((config.seed + block) * 100 + rank)
        data = batches(config, generator, config.rows)
        diffs: list[float] = []
        plain_ms: list[float] = []
        hooks_before = len(hook_s)
        seen: list[set[int]] = []
        for step in range(config.timed_steps):
            batch = next(data)
            negatives = torch.randint(1, config.rows + 1, (config.negatives,), generator=generator)
            took = {}
            for name in ("plain", "tracked")[:: 1 - 2 * (step % 2)]:  # alternate who goes first
                dmp, opt = (plain, plain_opt) if name == "plain" else (tracked, tracked_opt)
                dist.barrier()
                start = time.perf_counter()
                ids = train_step(dmp, opt, batch, negatives)
                took[name] = time.perf_counter() - start
            seen.append(ids)
            diffs.append(1000 * (took["tracked"] - took["plain"]))
            plain_ms.append(1000 * took["plain"])
        start = time.perf_counter()
        reported = tracker.get_unique()
        get_unique_ms = 1000 * (time.perf_counter() - start)
        start = time.perf_counter()
        union = all_union(set().union(*seen))
        union_ms = 1000 * (time.perf_counter() - start)
        blocks.append(
            {
                "seed": config.seed + block,
                "steps": config.timed_steps,
                "plain_step_ms": spread(plain_ms),
                "tracked_minus_plain_step_ms": spread(diffs),
                "hook_ms_per_step": round(1000 * sum(hook_s[hooks_before:]) / config.timed_steps, 3),
                "get_unique_ms": round(get_unique_ms, 3),
                "ids_reported_here": sum(rows.ids.numel() for rows in reported.values()),
                "batch_id_union_ms": round(union_ms, 3),
                "batch_ids_all_ranks": len(union),
            }
        )
    return {"rank": rank, "blocks": blocks}


TIMING_BLOCKS = 3  # timing blocks, each with batches from its own seed


# ----------------------------------------------------------------------------------------------
# (b) managed-collision modules vs headroom rows

RAW_ID_SPACE = 2**40  # raw ids (a 64-bit hash of the item_id string would do) are drawn below this


class MCModel(torch.nn.Module):
    """A managed-collision item table (MCH, LFU-by-distance eviction) read by the project's two
    features, and a loss that gives every looked-up row a gradient."""

    def __init__(self, config: ProbeConfig, zch_rows: int, eviction_interval: int, world: int) -> None:
        super().__init__()
        table = EmbeddingConfig(
            name=MC_TABLE,
            embedding_dim=config.dim,
            num_embeddings=zch_rows,
            feature_names=[HISTORY, CANDIDATES],
        )
        mch = MCHManagedCollisionModule(
            zch_size=zch_rows,
            device=torch.device("cpu"),
            eviction_policy=DistanceLFU_EvictionPolicy(),
            eviction_interval=eviction_interval,
            input_hash_size=RAW_ID_SPACE,
            buckets=world,  # the planner refuses a bucket count the world size does not divide
        )
        self.mc = ManagedCollisionEmbeddingCollection(
            EmbeddingCollection(tables=[table], device=torch.device("meta")),
            ManagedCollisionCollection({MC_TABLE: mch}, embedding_configs=[table]),
            return_remapped_features=True,
        )

    def forward(self, lookups: KeyedJaggedTensor) -> tuple[torch.Tensor, KeyedJaggedTensor]:
        embedded, remapped = self.mc(lookups)
        loss = sum(jt.values().pow(2).sum() for jt in embedded.values())
        return cast(torch.Tensor, loss), remapped


class PlainModel(torch.nn.Module):
    """The same table without managed collisions (ids are rows), for timing."""

    def __init__(self, config: ProbeConfig, rows: int) -> None:
        super().__init__()
        table = EmbeddingConfig(
            name=MC_TABLE, embedding_dim=config.dim, num_embeddings=rows, feature_names=[HISTORY, CANDIDATES]
        )
        self.ec = EmbeddingCollection(tables=[table], device=torch.device("meta"))

    def forward(self, lookups: KeyedJaggedTensor) -> tuple[torch.Tensor, None]:
        loss = sum(jt.values().pow(2).sum() for jt in self.ec(lookups).values())
        return cast(torch.Tensor, loss), None


def shard_table_model(
    model: torch.nn.Module, world: int, sharder: Any, optimizer: str = "rowwise_adagrad"
) -> DistributedModelParallel:
    """``model``'s table row-wise with a fused optimizer (row-wise Adagrad: the project's CPU default), by DMP."""
    tables = [m for m in model.modules() if isinstance(m, EmbeddingCollection)]
    apply_optimizer_in_backward(TABLE_OPTIMIZERS[optimizer], tables[0].parameters(), {"lr": 0.05})
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=world, local_world_size=world), kernel_config=KernelConfig(compute_device="cpu")
    )
    constraints = {MC_TABLE: ParameterConstraints(sharding_types=["row_wise"], compute_kernels=["fused"])}
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    plan = planner.collective_plan(model, [sharder], dist.GroupMember.WORLD)
    return DistributedModelParallel(model, device=torch.device("cpu"), plan=plan, sharders=[sharder])


def raw_lookups(
    config: ProbeConfig, pools: list[tuple[np.ndarray, float]], rng: np.random.Generator
) -> KeyedJaggedTensor:
    """A batch's lookups of raw ids: each id drawn from one of ``pools`` (ids, share of draws)."""
    lengths = torch.from_numpy(rng.integers(2, config.max_len + 1, config.batch))
    count = int(lengths.sum()) + config.negatives
    which = rng.choice(len(pools), size=count, p=[share for _, share in pools])
    values = np.array([rng.choice(pools[w][0]) for w in which], dtype=np.int64)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=[HISTORY, CANDIDATES],
        values=torch.from_numpy(values),
        lengths=torch.cat([lengths, torch.tensor([config.negatives]), torch.zeros(config.batch - 1, dtype=torch.long)]),
    )


def mc_state_map(dmp: DistributedModelParallel) -> dict[int, int]:
    """raw id -> row, as serving would rebuild it from the checkpointed MC state of every rank
    (sorted raw ids and their rows; empty slots hold int64 max)."""
    state = dmp.state_dict()
    mine: dict[int, int] = {}
    for key in state:
        if key.endswith("_mch_sorted_raw_ids"):
            raw = state[key]
            rows = state[key.replace("_mch_sorted_raw_ids", "_mch_remapped_ids_mapping")]
            raw, rows = (t.local_shards()[0].tensor if isinstance(t, ShardedTensor) else t for t in (raw, rows))
            used = raw != torch.iinfo(torch.int64).max
            mine.update(zip(raw[used].tolist(), rows[used].tolist(), strict=True))
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return {raw: row for part in everyone for raw, row in part.items()}


def observed(lookups: KeyedJaggedTensor, remapped: KeyedJaggedTensor) -> dict[int, int]:
    """raw id -> row as one forward remapped it (this rank's batch)."""
    return dict(zip(lookups.values().tolist(), remapped.values().tolist(), strict=True))


@dataclass(frozen=True)
class MCSizes:
    """The managed-collision check's table and id pools: old + new ids fit, the flood does not."""

    rows: int = 4_000
    old: int = 3_000  # ids seen before the "base version"
    new: int = 300  # ids first seen after it
    flood: int = 4_000  # more ids than free rows, to force evictions
    phase_steps: int = 8


def mc_table_rows(dmp: DistributedModelParallel) -> dict[int, torch.Tensor]:
    """global row -> a copy of its vector, for the rows of the MCH table this rank holds."""
    table = next(v for k, v in dmp.state_dict().items() if k.endswith(f"embeddings.{MC_TABLE}.weight"))
    rows = {}
    for first, shard in local_rows(cast(ShardedTensor, table)):
        rows.update({first + i: row.clone() for i, row in enumerate(shard.detach())})
    return rows


def miss_rows(dmp: DistributedModelParallel) -> set[int]:
    """The rows an unadmitted raw id is looked up in: the last row of every rank's MCH shard."""
    mine = {
        m._output_global_offset + m._zch_size - 1 for m in dmp.modules() if isinstance(m, MCHManagedCollisionModule)
    }
    return all_union(mine)


def mc_check(
    rank: int, world: int, config: ProbeConfig, sizes: MCSizes, eviction_interval: int, optimizer: str
) -> dict[str, Any]:
    """Admission, stability, eviction and a serving-side map of a sharded MCH item table."""
    torch.manual_seed(config.seed)
    ids = np.random.default_rng(config.seed).choice(RAW_ID_SPACE, sizes.old + sizes.new + sizes.flood, replace=False)
    old, new, flood = np.split(ids, [sizes.old, sizes.old + sizes.new])
    rng = np.random.default_rng([config.seed, rank])
    model = MCModel(config, sizes.rows, eviction_interval, world)
    dmp = shard_table_model(model, world, ManagedCollisionEmbeddingCollectionSharder(), optimizer)
    misses = miss_rows(dmp)
    out: dict[str, Any] = {"rank": rank, "miss_rows": misses, "eviction_interval": eviction_interval}

    def phase(pools: list[tuple[np.ndarray, float]]) -> list[dict[int, int]]:
        """Train ``phase_steps`` steps; each step's raw id -> row over all ranks."""
        maps = []
        for _ in range(sizes.phase_steps):
            lookups = raw_lookups(config, pools, rng)
            loss, remapped = dmp(lookups)
            loss.backward()
            everyone: list[Any] = [None] * world
            dist.all_gather_object(everyone, observed(lookups, remapped))
            maps.append({raw: row for part in everyone for raw, row in part.items()})
        return maps

    def consistent(maps: list[dict[int, int]]) -> bool:
        """No two raw ids share a row that is not a miss row, within each step."""
        rows = [[r for r in m.values() if r not in misses] for m in maps]
        return all(len(set(admitted)) == len(admitted) for admitted in rows)

    warm = phase([(old, 1.0)])
    after_warm = mc_state_map(dmp)
    old_seen = {raw for m in warm for raw in m}
    out["warm"] = {
        "old_ids_seen": len(old_seen),
        "admitted": len(old_seen & after_warm.keys()),
        "rows_distinct_per_step": consistent(warm),
    }

    before_mixed = mc_table_rows(dmp)
    mixed = phase([(old, 0.8), (new, 0.2)])
    after_mixed = mc_state_map(dmp)
    new_set = set(new.tolist())
    first_seen: dict[int, int] = {}
    first_row: dict[int, int] = {}
    rows_of_new: dict[int, set[int]] = {}
    for step, mapping in enumerate(mixed):
        for raw, row in mapping.items():
            if raw in new_set:
                first_seen.setdefault(raw, step)
                if row not in misses:
                    first_row.setdefault(raw, step)
                    rows_of_new.setdefault(raw, set()).add(row)
    delays = [first_row[raw] - first_seen[raw] for raw in first_row]
    after = mc_table_rows(dmp)
    new_rows = {row for rows in rows_of_new.values() for row in rows}
    held = [row for row in new_rows if row in before_mixed]  # this rank's shard
    trained = all_union({row for row in held if not torch.equal(before_mixed[row], after[row])})
    last = mixed[-1]
    out["new_ids"] = {
        "seen": len(first_seen),
        "admitted": len(first_row),
        "steps_to_row": {str(d): delays.count(d) for d in sorted(set(delays))},
        "row_changed_after_admission": sum(len(rows) > 1 for rows in rows_of_new.values()),
        "rows_of_new_ids_whose_vector_changed": len(trained),
        "old_ids_whose_row_moved": sum(after_mixed.get(raw) != row for raw, row in after_warm.items()),
        "rows_distinct_per_step": consistent(mixed),
        # Serving's map, rebuilt from the MC state, must send the last step's ids where training did.
        "state_map_agrees_with_training": all(
            after_mixed.get(raw, -1) == row or row in misses for raw, row in last.items()
        ),
    }

    dmp.eval()  # serving's forward: remap only, no admission
    probe = raw_lookups(config, [(new, 0.5), (flood, 0.5)], rng)
    with torch.no_grad():
        _, remapped = dmp(probe)
    unseen = [row for raw, row in observed(probe, remapped).items() if raw not in after_mixed]
    out["eval_mode"] = {
        "unseen_ids": len(unseen),
        "unseen_ids_on_miss_rows": sum(row in misses for row in unseen),
        "state_unchanged": mc_state_map(dmp) == after_mixed,
    }
    dmp.train()

    flooded = phase([(flood, 1.0)])
    after_flood = mc_state_map(dmp)
    flood_seen = {raw for m in flooded for raw in m}
    returning = phase([(old, 1.0)])
    after_return = mc_state_map(dmp)
    had_row = {raw: row for raw, row in after_mixed.items() if raw in set(old.tolist())}
    out["eviction"] = {
        "distinct_ids_offered": len(after_mixed.keys() | flood_seen),
        "rows": sizes.rows,
        "flood_ids_seen": len(flood_seen),
        "flood_ids_admitted": len(flood_seen & after_flood.keys()),
        "old_ids_evicted": sum(raw not in after_flood for raw in had_row),
        "old_ids_with_a_different_row_after_returning": sum(
            raw in after_return and after_return[raw] != row for raw, row in had_row.items()
        ),
        "rows_distinct_per_step": consistent(flooded + returning),
    }
    buffers = {
        name: buffer.numel() * buffer.element_size()
        for module in dmp.modules()
        if isinstance(module, MCHManagedCollisionModule)
        for name, buffer in module.named_buffers()
    }
    mch = next(m for m in dmp.modules() if isinstance(m, MCHManagedCollisionModule))
    history = mch._history_accumulator
    out["memory_bytes_per_rank"] = {
        "mc_buffers": sum(buffers.values()),
        "history_accumulator": history.numel() * history.element_size(),
        "table_rows": sizes.rows // world * config.dim * 4,
    }
    return out


def headroom_check(rank: int, world: int, config: ProbeConfig, headroom: float, new_items: int) -> dict[str, Any]:
    """The alternative to MC: the project's table built with ``headroom`` spare rows; items
    first seen after the base version take the next free indices (what a vocabulary delta
    records). Do their rows train, do the spare rows stay untouched, does the tracker report
    the new rows, and does a lookup through the sharded table (what a delta publishes) return
    the rows' stored values?"""
    torch.manual_seed(config.seed)
    vocab = config.rows
    table_rows = int(vocab * (1 + headroom))
    sized = ProbeConfig(**{**asdict(config), "rows": table_rows})
    dmp, optimizer = project_model(sized, world, "row_wise", "rowwise_adagrad")
    tracker = dmp.init_torchrec_delta_tracker(DeltaTrackerConfig(tracking_mode=TrackingMode.ID_ONLY))
    generator = torch.Generator().manual_seed(config.seed * 100 + rank)
    before = snapshot(dmp)
    looked_up: set[int] = set()
    known, fresh = batches(config, generator, vocab), batches(config, generator, new_items)
    for step in range(config.steps):
        batch = next(known)
        if step >= config.steps // 2:  # new items arrive: their indices follow the vocabulary's
            extra = next(fresh)
            batch["item_indices"][: config.batch // 4] = extra["item_indices"][: config.batch // 4] + vocab
        negatives = torch.randint(1, vocab + 1, (config.negatives,), generator=generator)
        looked_up |= train_step(dmp, optimizer, batch, negatives)
    first = local_rows(dmp.state_dict()[TABLE_WEIGHT])[0][0]
    reported = tracker.get_unique().get(TRACKER_FQN)
    tracked = all_union(set((reported.ids + first).tolist()) if reported is not None else set())
    changed, batch_ids = all_union(changed_rows(before, dmp)), all_union(looked_up)
    new_ids = {i for i in batch_ids if i > vocab}
    table = catalog_embeddings(dmp, table_rows + 1)
    agrees = all(torch.equal(table[first : first + len(rows)], rows) for first, rows in snapshot(dmp))
    return {
        "rank": rank,
        "vocabulary": vocab,
        "table_rows": table_rows + 1,
        "new_items_looked_up": len(new_ids),
        "new_items_trained": len(new_ids & changed),
        "spare_rows_changed": len({i for i in changed if i > vocab + new_items}),
        "tracker_reports_new_items": len(new_ids & tracked),
        "tracked_equals_batch_ids": tracked == batch_ids,
        "sharded_lookup_equals_stored_rows": agrees,
    }


def table_timing(rank: int, world: int, config: ProbeConfig, headroom: float, eviction_interval: int) -> dict[str, Any]:
    """Per-step time of the same row-wise table (SGD: the MCH table's admissions need it on CPU,
    see mc_check): plain, plain with ``headroom`` spare rows, and with an MCH module in front
    (raw ids). Steps alternate in a rotating order and are compared step by step with the plain
    table's, in blocks whose batches come from different seeds."""
    torch.manual_seed(config.seed)
    rows = config.rows
    models = {
        "plain": shard_table_model(PlainModel(config, rows), world, EmbeddingCollectionSharder(), "sgd"),
        "headroom": shard_table_model(
            PlainModel(config, int(rows * (1 + headroom))), world, EmbeddingCollectionSharder(), "sgd"
        ),
        "mc": shard_table_model(
            MCModel(config, rows, eviction_interval, world), world, ManagedCollisionEmbeddingCollectionSharder(), "sgd"
        ),
    }
    dense = np.arange(1, rows)
    raw = np.random.default_rng(config.seed).choice(RAW_ID_SPACE, int(rows * 0.8), replace=False)
    order = list(models)
    blocks = []
    for block in range(TIMING_BLOCKS):
        rng = np.random.default_rng([config.seed + block, rank])
        took: dict[str, list[float]] = {name: [] for name in models}
        for step in range(config.timed_steps):
            lookups = raw_lookups(config, [(dense, 1.0)], rng)
            mc_lookups = raw_lookups(config, [(raw, 1.0)], rng)
            for name in order[step % 3 :] + order[: step % 3]:
                dist.barrier()
                start = time.perf_counter()
                loss, _ = models[name](mc_lookups if name == "mc" else lookups)
                loss.backward()
                took[name].append(1000 * (time.perf_counter() - start))
        blocks.append(
            {
                "seed": config.seed + block,
                "steps": config.timed_steps,
                "plain_step_ms": spread(took["plain"]),
                "headroom_minus_plain_step_ms": spread(np.subtract(took["headroom"], took["plain"])),
                "mc_minus_plain_step_ms": spread(np.subtract(took["mc"], took["plain"])),
            }
        )
    return {
        "rank": rank,
        "blocks": blocks,
        "headroom": headroom,
        "headroom_rows": int(rows * headroom),
        # a row of the table plus its row-wise Adagrad state (one float), float32
        "headroom_bytes_rowwise_adagrad": int(rows * headroom) * (table_width(config.dim) * 4 + 4),
    }


# ----------------------------------------------------------------------------------------------
# The run

ERROR_CHARS = 600  # FBGEMM's "no kernel" errors list every dispatch key; the first lines say it all


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One check's outcome from its ranks' results: ok when every rank's check passed, the first
    failing rank's error otherwise (verbatim, cut after ERROR_CHARS), every rank's figures."""
    failed = [r for r in results if not r["ok"]]
    outcome: dict[str, Any] = {"ok": not failed}
    if failed:
        error = failed[0]["error"]
        outcome["error"] = error if len(error) <= ERROR_CHARS else error[:ERROR_CHARS] + " ... (cut)"
        where = [line for line in failed[0].get("traceback", "").splitlines() if line.startswith("  File ")]
        outcome["raised_at"] = where[-1].strip() if where else None
        outcome["failed_ranks"] = [r.get("rank", i) for i, r in enumerate(results) if not r["ok"]]
    hidden = ("ok", "error", "traceback")
    outcome["ranks"] = [{k: v for k, v in r.items() if k not in hidden} for r in results if r["ok"]]
    return outcome


def run_checks(config: ProbeConfig, sizes: MCSizes, worlds: tuple[int, ...], log: Callable[[str], None]) -> dict:
    """Every check, each in its own process group; {name: outcome, seconds}."""
    checks: list[tuple[str, Callable[..., dict[str, Any]], int, tuple]] = []
    for case in TRACKER_CASES:
        if case.world in worlds:
            checks.append((case.name, tracker_check, case.world, (config, case)))
    for world in worlds:
        checks.append((f"tracker_timing/row_wise/world{world}", tracker_timing, world, (config, "row_wise")))
    for world in worlds:
        for optimizer in ("rowwise_adagrad", "sgd"):
            checks.append((f"mc/{optimizer}/world{world}", mc_check, world, (config, sizes, 1, optimizer)))
    checks.append(("mc/sgd/eviction_interval5/world1", mc_check, 1, (config, sizes, 5, "sgd")))
    for world in worlds:
        checks.append((f"headroom/world{world}", headroom_check, world, (config, 0.25, 300)))
    for world in worlds:
        checks.append((f"table_timing/world{world}", table_timing, world, (config, 0.25, 1)))
    out = {}
    for name, check, world, args in checks:
        start = time.perf_counter()
        outcome = summarise(run_spawned(check, world, *args))
        outcome["seconds"] = round(time.perf_counter() - start, 1)
        log(f"{name}: {'ok' if outcome['ok'] else outcome['error'][:200]} ({outcome['seconds']} s)")
        out[name] = outcome
    return out


def machine() -> dict[str, Any]:
    """What ran the probe: CPU count, Python and library versions."""
    import fbgemm_gpu  # noqa: PLC0415 (only its version is needed)

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchrec": getattr(torchrec, "__version__", "unknown"),
        "fbgemm_gpu": getattr(fbgemm_gpu, "__version__", "unknown"),
        "backend": "gloo",
    }


def commit() -> str:
    """The checkout's commit (with +dirty when this file has uncommitted changes)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", __file__], capture_output=True, text=True).stdout
    return head + ("+dirty" if dirty.strip() else "")


def main(argv: list[str] | None = None) -> None:
    """Run every check and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2], help="process counts to run on")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    config, sizes = ProbeConfig(), MCSizes()
    started = time.time()
    checks = run_checks(config, sizes, tuple(args.worlds), lambda line: print(line, flush=True))
    result = {
        "command": " ".join([".venv/bin/python -m benchmarks.streaming.probe_torchrec", *(argv or sys.argv[1:])]),
        "commit": commit(),
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "config": asdict(config),
        "mc_sizes": asdict(sizes),
        "checks": checks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=_jsonable) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

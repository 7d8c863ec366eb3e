"""Sharding the item table with DistributedModelParallel, and moving sharded state in and out.

* ``shard_model`` gives the item table a fused optimizer applied in backward (FBGEMM
  updates the touched rows during the backward pass, so no dense gradient of the table is
  ever built), asks the planner for the configured sharding (row-wise by default) and
  wraps the model in DMP; the encoder stays replicated and data-parallel (DDP).
* ``initialise_table`` draws every row of the sharded table from generators keyed by
  (seed, block of rows), so a row's initial value depends on the seed and its index alone:
  never on the number of workers, the sharding, or which rank holds it. (DMP's own
  initialisation draws each shard from its rank's random state, so row-wise shards of
  ranks seeded alike started as copies of each other.)
* ``gather_state`` collects every tensor of the model and of the table's optimizer as one
  full, unsharded tensor on rank 0; ``load_state`` copies full tensors back into whatever
  shards this rank holds. Checkpoints are therefore independent of world size and sharding
  type, and a smaller table (an older vocabulary) fills only the rows it has.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
import torch.distributed as dist
import torchrec.optim as trec_optim
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec import KeyedJaggedTensor
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.optimizers import in_backward_optimizer_filter

from training.common.config import TableConfig
from training.common.model import INIT_RANGE
from training.common.sharded_table import CANDIDATES, HISTORY, TABLE, TABLE_WEIGHT, ShardedTableModel

INIT_BLOCK_ROWS = 4096  # rows drawn from one generator; a rank draws only the blocks its shard touches

TABLE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": trec_optim.Adam,
    "rowwise_adagrad": trec_optim.RowWiseAdagrad,
    "adagrad": trec_optim.Adagrad,
    "sgd": trec_optim.SGD,
}


def shard_model(
    model: ShardedTableModel,
    table: TableConfig,
    device: torch.device,
    local_world_size: int,
    *,
    dense_lr: float,
    betas: tuple[float, float],
    seed: int,
) -> DistributedModelParallel:
    """``model`` (item table on the meta device) wrapped in DMP over the default process group.

    The table's optimizer is ``table``'s (its learning rate resolved from ``dense_lr`` when 0;
    Adam's ``betas`` are the dense optimizer's); its rows are drawn from ``seed``."""
    name, lr = table.optimizer(device.type == "cuda", dense_lr)
    kwargs: dict[str, float] = {"lr": lr}
    if name == "adam":
        kwargs.update(beta1=betas[0], beta2=betas[1])
    apply_optimizer_in_backward(TABLE_OPTIMIZERS[name], model.item_table.parameters(), kwargs)
    sharder = EmbeddingCollectionSharder()
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=dist.get_world_size(), local_world_size=local_world_size),
        kernel_config=KernelConfig(compute_device=device.type),
    )
    constraints = {TABLE: ParameterConstraints(sharding_types=[table.sharding], compute_kernels=["fused"])}
    planner = EmbeddingShardingPlanner(
        topology=topology, constraints=constraints, storage_reservation=FixedPercentageStorageReservation(0.15)
    )
    plan = planner.collective_plan(model, [sharder], dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(model, device=device, plan=plan, sharders=[sharder])
    initialise_table(dmp, seed, model.dim)
    return dmp


def initial_rows(first: int, count: int, width: int, dim: int, seed: int) -> torch.Tensor:
    """Rows ``first .. first + count - 1`` of the initial item table: uniform in
    [-INIT_RANGE, INIT_RANGE] in the first ``dim`` columns, 0 in the padding columns."""
    blocks = []
    for block in range(first // INIT_BLOCK_ROWS, (first + count - 1) // INIT_BLOCK_ROWS + 1):
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, block]).generate_state(1)[0]))
        rows = torch.zeros(INIT_BLOCK_ROWS, width)
        rows[:, :dim] = torch.rand(INIT_BLOCK_ROWS, dim, generator=generator) * (2 * INIT_RANGE) - INIT_RANGE
        blocks.append(rows)
    start = first - (first // INIT_BLOCK_ROWS) * INIT_BLOCK_ROWS
    return torch.cat(blocks)[start : start + count] if count else torch.zeros(0, width)


def initialise_table(dmp: DistributedModelParallel, seed: int, dim: int) -> None:
    """Overwrite this rank's shards of the item table with their ``initial_rows``."""
    table = dmp.state_dict()[TABLE_WEIGHT]
    width = table.size()[1]
    for shard in cast(ShardedTensor, table).local_shards():
        first, column = shard.metadata.shard_offsets
        rows, columns = shard.tensor.shape
        values = initial_rows(first, rows, width, dim, seed)[:, column : column + columns]
        with torch.no_grad():
            shard.tensor.copy_(values.to(shard.tensor.device, shard.tensor.dtype))


def dense_optimizer(
    dmp: DistributedModelParallel, *, lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.Optimizer:
    """Adam over the replicated (data-parallel) parameters: everything but the item table."""
    params = [param for _, param in in_backward_optimizer_filter(dmp.named_parameters())]
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)


def catalog_embeddings(dmp: DistributedModelParallel, num_rows: int) -> torch.Tensor:
    """(num_rows, D) every row of the item table on every rank (a collective).

    Each rank looks up an equal slice of the row ids through the sharded table, then the
    slices are all-gathered: it works for any sharding and never needs the table in one place
    first.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    per_rank = -(-num_rows // world)
    device = next(dmp.module.encoder.parameters()).device
    ids = torch.arange(rank * per_rank, (rank + 1) * per_rank, device=device).clamp(max=num_rows - 1)
    lookups = KeyedJaggedTensor.from_lengths_sync(
        keys=[HISTORY, CANDIDATES],
        values=ids,
        lengths=torch.tensor([per_rank, 0], device=device),
    )
    with torch.no_grad():
        mine = cast(ShardedTableModel, dmp.module).item_table(lookups)[HISTORY].values().contiguous()
    slices = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(slices, mine)
    return torch.cat(slices)[:num_rows]


def gather_state(tensors: dict[str, torch.Tensor | ShardedTensor]) -> dict[str, torch.Tensor] | None:
    """Full copies of ``tensors`` (a state dict) on rank 0, None elsewhere (a collective).

    Every rank sends the shards it holds, so keys only some ranks have (the optimizer state
    of a table-wise table lives on its owner alone) are gathered as well.
    """
    rank0 = dist.get_rank() == 0
    local: dict[str, tuple[tuple[int, ...], list[tuple[list[int], torch.Tensor]]]] = {}
    full: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if isinstance(value, ShardedTensor):
            shards = [(shard.metadata.shard_offsets, shard.tensor.detach().cpu()) for shard in value.local_shards()]
            local[key] = (tuple(value.size()), shards)
        elif rank0:
            full[key] = value.detach().cpu().clone()
    received: list[dict] | None = [{} for _ in range(dist.get_world_size())] if rank0 else None
    dist.gather_object(local, received, dst=0)
    if not rank0:
        return None
    for part in cast(list[dict], received):
        for key, (size, shards) in part.items():
            for offsets, tensor in shards:
                target = full.setdefault(key, torch.zeros(size, dtype=tensor.dtype))
                target[tuple(slice(o, o + n) for o, n in zip(offsets, tensor.shape, strict=True))] = tensor
    return full


def load_state(tensors: dict[str, torch.Tensor | ShardedTensor], full: dict[str, torch.Tensor]) -> list[str]:
    """Copy ``full`` tensors into ``tensors`` (views of live state) in place; returns keys not in ``full``.

    A sharded tensor (the item table, its optimizer state) may get a full tensor with fewer
    rows: it fills the rows it has (warm start from an older, smaller vocabulary) and the
    others keep their values. Every other shape must match exactly.
    """
    missing = []
    for key, target in tensors.items():
        if key not in full:
            missing.append(key)
            continue
        source = full[key]
        if isinstance(target, ShardedTensor):
            if source.shape[1:] != target.size()[1:]:
                raise ValueError(f"{key}: cannot load shape {tuple(source.shape)} into {tuple(target.size())}")
            for shard in target.local_shards():
                _copy_rows(shard.tensor, source, shard.metadata.shard_offsets)
        else:
            if source.shape != target.shape:
                raise ValueError(f"{key}: cannot load shape {tuple(source.shape)} into {tuple(target.shape)}")
            with torch.no_grad():
                target.copy_(source)
    return missing


def _copy_rows(shard: torch.Tensor, source: torch.Tensor, offsets: list[int]) -> None:
    """Fill ``shard`` (at ``offsets`` of the full tensor) from ``source``'s overlapping rows."""
    first = offsets[0]
    rows = max(0, min(shard.shape[0], source.shape[0] - first))
    columns = tuple(slice(offset, offset + size) for offset, size in zip(offsets[1:], shard.shape[1:], strict=True))
    with torch.no_grad():
        shard[:rows].copy_(source[(slice(first, first + rows), *columns)])

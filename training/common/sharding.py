"""Sharding the item table with DistributedModelParallel, and moving sharded state in and out.

* ``shard_model`` asks the planner for the configured sharding (row-wise by default), wraps
  the model in DMP (the encoder stays replicated and data-parallel, DDP) and gives the item
  table an optimizer applied in backward, in one of two kernels (``table_kernel``):
  - ``fused``: FBGEMM updates the touched rows during the backward pass, so no dense gradient
    of the table is ever built (SGD, Adagrad, row-wise Adagrad; Adam on GPU only);
  - ``dense`` (Adam on CPU, which FBGEMM's CPU kernels lack): each rank's shard is a plain
    tensor that gets a gradient, and ``torch.optim.Adam`` steps it as soon as the gradient is
    accumulated (``DenseTableAdam``). Sharding, lookups and collectives are TorchRec's as
    with the fused kernel; only the lookup on the shard is a plain row gather, because
    FBGEMM's CPU dense kernel pools every bag even in ``PoolingMode.NONE``.
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

import types
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchrec.optim as trec_optim
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor
from torchrec import KeyedJaggedTensor
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.batched_embedding_kernel import BatchedDenseEmbedding
from torchrec.distributed.embedding import EmbeddingCollectionSharder, ShardedEmbeddingCollection
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
from torchrec.distributed.types import ParameterSharding, ShardingEnv
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


def table_kernel(optimizer: str, device: torch.device) -> str:
    """The TorchRec compute kernel of the item table: ``dense`` for Adam on CPU (FBGEMM has no
    CPU Adam kernel), ``fused`` otherwise."""
    return "dense" if optimizer == "adam" and device.type == "cpu" else "fused"


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
    kernel = table_kernel(name, device)
    if kernel == "dense" and table.sharding != "row_wise":
        # Every rank must hold rows: Adam's step count is saved once, from rank 0.
        raise ValueError("adam on CPU trains the item table with the dense kernel, which needs --sharding row_wise")
    if kernel == "fused":
        kwargs: dict[str, float] = {"lr": lr}
        if name == "adam":
            kwargs.update(beta1=betas[0], beta2=betas[1])
        apply_optimizer_in_backward(TABLE_OPTIMIZERS[name], model.item_table.parameters(), kwargs)
    sharder = RowGatherSharder()
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=dist.get_world_size(), local_world_size=local_world_size),
        kernel_config=KernelConfig(compute_device=device.type),
    )
    # The planner places the table as for the fused kernel (it accepts the dense kernel only
    # with data-parallel tables); the dense kernel then takes the same shards.
    constraints = {TABLE: ParameterConstraints(sharding_types=[table.sharding], compute_kernels=["fused"])}
    planner = EmbeddingShardingPlanner(
        topology=topology, constraints=constraints, storage_reservation=FixedPercentageStorageReservation(0.15)
    )
    plan = planner.collective_plan(model, [sharder], dist.GroupMember.WORLD)
    for module_plan in plan.plan.values():
        for parameter_sharding in cast(dict[str, ParameterSharding], module_plan).values():
            parameter_sharding.compute_kernel = kernel
    dmp = DistributedModelParallel(model, device=device, plan=plan, sharders=[sharder])
    if kernel == "dense":
        DenseTableAdam(dmp, lr=lr, betas=betas)
    initialise_table(dmp, seed, model.dim)
    return dmp


class RowGatherSharder(EmbeddingCollectionSharder):
    """TorchRec's EmbeddingCollection sharder whose dense-kernel lookups on CPU are plain row
    gathers (``F.embedding`` on the shard). FBGEMM's CPU dense kernel pools each bag even in
    ``PoolingMode.NONE`` (4 ids of one history in, 1 row out), which breaks sequence lookups;
    a row gather is what that mode means. Fused kernels and GPUs are left as they are."""

    def shard(
        self,
        module: Any,
        params: dict[str, ParameterSharding],
        env: ShardingEnv,
        device: torch.device | None = None,
        module_fqn: str | None = None,
    ) -> ShardedEmbeddingCollection:
        sharded = super().shard(module, params, env, device, module_fqn)
        if device is None or device.type == "cpu":
            for lookup in sharded._lookups:  # TorchRec keeps them in a plain list, not as submodules
                for kernel in lookup.modules():
                    if isinstance(kernel, BatchedDenseEmbedding):
                        kernel.forward = types.MethodType(_gather_rows, kernel)
        return sharded


def _gather_rows(kernel: BatchedDenseEmbedding, features: KeyedJaggedTensor) -> torch.Tensor:
    """(ids, width) rows of ``kernel``'s local tables for ``features``' ids, in their order."""
    module = kernel.emb_module
    tables = [
        module.weights[start : start + rows * width].view(rows, width)
        for (rows, width), start in zip(module.embedding_specs, module.weights_physical_offsets, strict=False)
    ]
    ids = features.values().long().split(features.length_per_key())
    return torch.cat(
        [F.embedding(part, tables[table]) for part, table in zip(ids, kernel._feature_table_map, strict=True)]
    )


class DenseTableAdam:
    """Adam on the dense-kernel item table, stepped in backward like a fused optimizer: each
    rank's shard is one flat tensor (``emb_module.weights``); when backward has accumulated its
    gradient, ``torch.optim.Adam`` steps it and drops the gradient.

    It registers itself where TorchRec puts a table's in-backward optimizers
    (``_in_backward_optimizers`` of the table parameter DMP exposes), so the dense optimizer
    leaves the table alone and ``table_optimizer_state`` finds it. Its state is zero-initialised
    at once (Adam's own is created at the first step), so a checkpoint restores into it.
    """

    def __init__(self, dmp: DistributedModelParallel, *, lr: float, betas: tuple[float, float]) -> None:
        flat = [
            kernel.emb_module.weights
            for module in dmp.modules()
            if isinstance(module, ShardedEmbeddingCollection)
            for lookup in module._lookups
            for kernel in lookup.modules()
            if isinstance(kernel, BatchedDenseEmbedding)
        ]
        if len(flat) != 1:
            raise ValueError(f"expected one dense-kernel item table per rank, found {len(flat)}")
        self.weights = flat[0]
        self.optimizer = torch.optim.Adam([self.weights], lr=lr, betas=betas)
        self.optimizer.state[self.weights] = {
            "step": torch.tensor(0.0),
            "exp_avg": torch.zeros_like(self.weights),
            "exp_avg_sq": torch.zeros_like(self.weights),
        }
        self.weights.register_post_accumulate_grad_hook(self._step)
        self.table_weight = cast(ShardedTensor, dmp.state_dict()[TABLE_WEIGHT])
        parameter = dict(dmp.named_parameters())[TABLE_WEIGHT]
        parameter._in_backward_optimizers = [self]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """Adam's parameter groups (a schedule sets ``lr`` here)."""
        return self.optimizer.param_groups

    def _step(self, weights: torch.Tensor) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state(self) -> dict[str, torch.Tensor | ShardedTensor]:
        """Adam's state as {name: tensor}: the moments sharded like the table (views of the live
        state, so loading into them restores it), the step count as a plain scalar."""
        state = self.optimizer.state[self.weights]
        out: dict[str, torch.Tensor | ShardedTensor] = {"step": state["step"]}
        for name in ("exp_avg", "exp_avg_sq"):
            moment = state[name]
            shards, first = [], 0
            for shard in self.table_weight.local_shards():
                count = shard.tensor.numel()
                shards.append(Shard(moment[first : first + count].view_as(shard.tensor), shard.metadata))
                first += count
            out[name] = ShardedTensor._init_from_local_shards_and_global_metadata(shards, self.table_weight.metadata())
        return out


def table_optimizers(dmp: DistributedModelParallel) -> list[Any]:
    """The optimizers that step the item table in backward (their ``param_groups`` hold its
    learning rate): DMP's fused optimizer, or the dense kernel's ``DenseTableAdam``."""
    parameter = dict(dmp.named_parameters())[TABLE_WEIGHT]
    dense = [opt for opt in getattr(parameter, "_in_backward_optimizers", []) if isinstance(opt, DenseTableAdam)]
    return dense or [dmp.fused_optimizer]


def table_optimizer_state(dmp: DistributedModelParallel) -> dict[str, Any]:
    """The item table's optimizer state, flattened to {param/state: tensor} (sharded tensors
    where the state is per row), whichever kernel steps it."""
    parameter = dict(dmp.named_parameters())[TABLE_WEIGHT]
    for optimizer in getattr(parameter, "_in_backward_optimizers", []):
        if isinstance(optimizer, DenseTableAdam):
            return {f"{TABLE_WEIGHT}/{name}": value for name, value in optimizer.state().items()}
    state = dmp.fused_optimizer.state_dict()["state"]
    return {f"{param}/{name}": value for param, values in state.items() for name, value in values.items()}


def set_table_lr(dmp: DistributedModelParallel, lr: float) -> None:
    """Set the item table's learning rate (a schedule's step), whichever kernel steps it."""
    for optimizer in table_optimizers(dmp):
        for group in optimizer.param_groups:
            group["lr"] = lr
        if not isinstance(optimizer, DenseTableAdam):
            optimizer.step()  # a fused optimizer's step only hands the new rate to FBGEMM


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

"""Sharded state in and out of DMP on two real gloo processes, row-wise and table-wise.

Training steps change the sharded table and its fused optimizer state; ``gather_state``
must return exactly what the ranks hold (``catalog_embeddings`` reads it back through the
sharded lookup), ``load_state`` must restore it exactly, and a smaller source table (an
older vocabulary) must fill its rows and leave the newer rows alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from infra.processes import free_port
from training.common.config import EncoderConfig, TableConfig
from training.common.loss import retrieval_loss
from training.common.sharded_table import TABLE_WEIGHT, lookup_input
from training.common.sharding import (
    catalog_embeddings,
    dense_optimizer,
    gather_state,
    initial_rows,
    load_state,
    shard_model,
)
from training.common.worker_loop import table_optimizer_state
from training.retrieval.config import TrainConfig

# 41 rows, split 21/20 row-wise over 2 ranks; dim 10 is stored in a 12-column table (FBGEMM needs multiples of 4)
from training.retrieval.sharded_model import ShardedRetrievalModel

# 41 rows, split 21/20 row-wise over 2 ranks; dim 10 is stored in a 12-column table (FBGEMM needs multiples of 4)
NUM_ITEMS = 40


def _train_steps(dmp, optimizer, rank: int) -> None:  # noqa: ANN001
    generator = torch.Generator().manual_seed(rank)
    for _ in range(3):
        batch = {
            "item_indices": torch.randint(1, NUM_ITEMS + 1, (4, 6), generator=generator),
            "action_ids": torch.randint(2, 7, (4, 6), generator=generator),
            "timestamps": torch.arange(24).view(4, 6) * 60_000,
            "lengths": torch.tensor([6, 5, 3, 2]),
            "valid": torch.ones(4, dtype=torch.bool),
        }
        negatives = torch.randint(1, NUM_ITEMS + 1, (8,), generator=generator)
        hidden, history_emb, negative_emb = dmp(
            lookup_input(batch["item_indices"], batch["lengths"], negatives),
            batch["action_ids"], batch["timestamps"], batch["lengths"],
        )  # fmt: skip
        terms = retrieval_loss(hidden, history_emb, batch, negatives, negative_emb, temperature=0.1,
                               in_batch_negatives=4, ntr_weight=0.1)  # fmt: skip
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()


def _check(rank: int, world: int, port: int, sharding: str, optimizer: str, scratch: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    table = TableConfig(sharding=sharding, embedding_optimizer=optimizer)
    config = TrainConfig(encoder=EncoderConfig(dim=10, max_len=6), table=table)
    model = ShardedRetrievalModel(config.encoder, NUM_ITEMS, torch.device("meta"))
    dmp = shard_model(
        model, config.table, torch.device("cpu"), world, dense_lr=config.lr, betas=config.betas, seed=config.seed
    )
    optimizer = dense_optimizer(dmp, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    initial = catalog_embeddings(dmp, NUM_ITEMS + 1)
    # Every row drawn on its own: the same table for any world size and sharding, no two rows alike.
    assert torch.equal(initial, initial_rows(0, NUM_ITEMS + 1, 12, 10, config.seed))
    assert len(torch.unique(initial[:, :10], dim=0)) == NUM_ITEMS + 1
    assert initial[:, 10:].abs().sum() == 0  # FBGEMM's padding columns are never read
    _train_steps(dmp, optimizer, rank)
    trained = catalog_embeddings(dmp, NUM_ITEMS + 1)
    assert not torch.equal(initial, trained)

    weights, table_state = gather_state(dmp.state_dict()), gather_state(table_optimizer_state(dmp))
    if rank == 0:
        assert torch.equal(weights[TABLE_WEIGHT], trained)
        assert table_state and all(state.abs().sum() > 0 for state in table_state.values())
        torch.save((weights, table_state), Path(scratch) / "state.pt")
    dist.barrier()
    weights, table_state = torch.load(Path(scratch) / "state.pt")

    _train_steps(dmp, optimizer, rank)  # move away from the saved state, then restore it
    assert load_state(dmp.state_dict(), weights) == []
    assert load_state(table_optimizer_state(dmp), table_state) == []
    assert torch.equal(catalog_embeddings(dmp, NUM_ITEMS + 1), trained)
    restored = gather_state(table_optimizer_state(dmp))
    if rank == 0:
        assert all(torch.equal(restored[key], table_state[key]) for key in table_state)

    older = {TABLE_WEIGHT: torch.full((11, 12), 0.5)}  # a vocabulary of items 0..10
    load_state({TABLE_WEIGHT: dmp.state_dict()[TABLE_WEIGHT]}, older)
    now = catalog_embeddings(dmp, NUM_ITEMS + 1)
    assert torch.equal(now[:11], older[TABLE_WEIGHT]) and torch.equal(now[11:], trained[11:])
    dist.destroy_process_group()


@pytest.mark.parametrize(
    ("sharding", "world", "optimizer"),
    [
        ("row_wise", 2, "rowwise_adagrad"),
        ("row_wise", 2, "adam"),  # torch Adam on TorchRec's dense kernel (CPU)
        ("table_wise", 2, "rowwise_adagrad"),
        ("row_wise", 1, "adam"),
    ],
)
def test_sharded_state_round_trips_exactly(sharding: str, world: int, optimizer: str, tmp_path: Path) -> None:
    mp.spawn(_check, args=(world, free_port(), sharding, optimizer, str(tmp_path)), nprocs=world)


def test_initial_rows_do_not_depend_on_how_they_are_cut() -> None:
    whole = initial_rows(0, 10_000, 8, 6, seed=3)
    pieces = torch.cat([initial_rows(0, 4_100, 8, 6, 3), initial_rows(4_100, 5_900, 8, 6, 3)])
    assert torch.equal(whole, pieces)
    assert not torch.equal(whole, initial_rows(0, 10_000, 8, 6, seed=4))

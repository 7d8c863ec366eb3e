"""Adam on the sharded item table on CPU (TorchRec's dense kernel, stepped in backward) and the
full-catalogue loss through the sharded lookup, on two real gloo processes.

Adam's first step moves every coordinate that got a gradient by exactly its learning rate
(m / sqrt(v) = sign of the gradient; the rate a schedule sets), so one step of the full
loss, where every item is a candidate, must move every item row of both ranks' shards by lr
in each of its ``dim`` columns, leave the padding row and FBGEMM's padding columns alone,
and the dense optimizer must not hold the table.
"""

from __future__ import annotations

import os

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
    set_table_lr,
    shard_model,
    table_optimizers,
)
from training.retrieval.config import TrainConfig
from training.retrieval.sharded_model import ShardedRetrievalModel

NUM_ITEMS, DIM, LR = 30, 6, 0.01


def _check(rank: int, world: int, port: int, optimizer: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    table = TableConfig(embedding_optimizer=optimizer, embedding_lr=2 * LR)
    config = TrainConfig(encoder=EncoderConfig(dim=DIM, max_len=5), table=table)
    model = ShardedRetrievalModel(config.encoder, NUM_ITEMS, torch.device("meta"))
    dmp = shard_model(model, config.table, torch.device("cpu"), world, dense_lr=1e-3, betas=(0.9, 0.98), seed=0)
    dense = dense_optimizer(dmp, lr=1e-3, betas=(0.9, 0.98), weight_decay=0.0)
    assert all(param.shape != dmp.state_dict()[TABLE_WEIGHT].size() for group in dense.param_groups
               for param in group["params"])  # fmt: skip
    set_table_lr(dmp, LR)  # what a learning-rate schedule does before every batch
    before = catalog_embeddings(dmp, NUM_ITEMS + 1)
    generator = torch.Generator().manual_seed(rank)
    batch = {
        "item_indices": torch.randint(1, NUM_ITEMS + 1, (3, 5), generator=generator),
        "action_ids": torch.full((3, 5), 2),
        "timestamps": torch.zeros(3, 5, dtype=torch.long),
        "lengths": torch.tensor([5, 4, 2]),
        "valid": torch.ones(3, dtype=torch.bool),
    }
    catalogue = torch.arange(1, NUM_ITEMS + 1)
    hidden, history_emb, catalogue_emb = dmp(
        lookup_input(batch["item_indices"], batch["lengths"], catalogue),
        batch["action_ids"], batch["timestamps"], batch["lengths"],
    )  # fmt: skip
    assert catalogue_emb.shape == (NUM_ITEMS, DIM)
    assert torch.allclose(catalogue_emb.detach(), before[1:, :DIM])
    terms = retrieval_loss(hidden, history_emb, batch, catalogue, catalogue_emb, temperature=0.1,
                           in_batch_negatives=0, ntr_weight=0.1, kind="full", chunk_items=7)  # fmt: skip
    dense.zero_grad()
    terms.total.backward()
    dense.step()
    after = catalog_embeddings(dmp, NUM_ITEMS + 1)
    moved = (after - before)[1:, :DIM].abs()
    if optimizer == "adam":
        assert torch.allclose(moved, torch.full_like(moved, LR), rtol=1e-3), moved
    else:
        assert table_optimizers(dmp)[0].param_groups[0]["lr"] == LR
        assert (moved.sum(dim=1) > 0).all()  # every row is a candidate of the full loss
    assert torch.equal(after[0], before[0])  # the padding row is never looked up
    assert after[:, DIM:].abs().sum() == 0  # nor are the padding columns
    dist.destroy_process_group()


@pytest.mark.parametrize("optimizer", ["adam", "rowwise_adagrad"])
def test_full_loss_steps_every_row_of_both_shards(optimizer: str) -> None:
    mp.spawn(_check, args=(2, free_port(), optimizer), nprocs=2)

"""A tiny retrieval run trains under bf16 autocast on CPU (``precision="bf16"``): the Ray Train
worker's epoch (``training.retrieval.worker._train_epoch``: the sharded table, the encoder's forward
in bf16, the loss and optimizers in float32) lowers the loss epoch after epoch, on a real gloo
process group of one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from features.examples import SequenceExamples
from features.reader import FeatureVersions
from infra.processes import free_port
from infra.settings import get_settings
from ingestion.schema import ACTION_IDS
from training.common.config import EncoderConfig
from training.common.sharding import dense_optimizer, shard_model
from training.retrieval.config import TrainConfig
from training.retrieval.sharded_model import ShardedRetrievalModel
from training.retrieval.worker import TrainJob, _train_epoch

NUM_ITEMS, LENGTH, ROWS, EPOCHS = 20, 8, 64, 3


def _examples() -> SequenceExamples:
    """Histories that walk the catalogue (item i is followed by i + 1): learnable in a few epochs."""
    starts = np.arange(ROWS) % NUM_ITEMS
    items = (starts[:, None] + np.arange(LENGTH + 1)) % NUM_ITEMS + 1
    return SequenceExamples(
        user_ids=np.array([f"u{row}" for row in range(ROWS)]),
        item_indices=items[:, :LENGTH],
        action_ids=np.full((ROWS, LENGTH), ACTION_IDS["view"]),
        timestamps=np.tile(np.arange(LENGTH, dtype=np.int64) * 60_000, (ROWS, 1)),
        lengths=np.full(ROWS, LENGTH),
        targets=items[:, LENGTH],
        num_items=NUM_ITEMS,
    )


def _train(rank: int, world: int, port: int, home: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    encoder = EncoderConfig(dim=16, num_blocks=1, max_len=LENGTH, dropout=0.0)
    config = TrainConfig(encoder=encoder, batch_size=16, precision="bf16", lr=3e-3, loss="full")
    model = ShardedRetrievalModel(encoder, NUM_ITEMS, torch.device("meta"))
    dmp = shard_model(model, config.table, torch.device("cpu"), world, dense_lr=config.lr, betas=config.betas, seed=0)
    optimizer = dense_optimizer(dmp, lr=config.lr, betas=config.betas, weight_decay=0.0)
    dtypes: set[str] = set()
    projection = dmp.module.encoder.blocks[0].uvqk
    projection.register_forward_hook(lambda _module, _inputs, output: dtypes.add(str(output.dtype)))
    job = TrainJob(get_settings(home=Path(home)), config, FeatureVersions(item_vocab=1, user_sequences=1), "run")
    shard = _examples()
    losses = [
        _train_epoch(dmp, optimizer, shard, job, epoch, rank, torch.device("cpu")) for epoch in range(1, EPOCHS + 1)
    ]
    Path(home, "result.json").write_text(json.dumps({"losses": losses, "dtypes": sorted(dtypes)}))
    dist.destroy_process_group()


def test_a_tiny_bf16_run_lowers_its_loss(tmp_path: Path) -> None:
    mp.spawn(_train, args=(1, free_port(), str(tmp_path)), nprocs=1)
    result = json.loads((tmp_path / "result.json").read_text())
    losses = result["losses"]
    assert result["dtypes"] == ["torch.bfloat16"]  # the encoder's matmuls ran in bf16
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses

"""The baseline of the training benchmark: the same model in a plain single-process loop.

No Ray, no DMP, no TorchRec: ``training.retrieval.model.RetrievalModel`` (items in an ``nn.Embedding``)
trained with one Adam over all parameters, on the same examples, batches, negatives and
loss as a Ray Train worker. Only the training steps are timed, as in the worker.
``plain_step`` is one such step on any device and precision (``benchmarks.gpu`` times it on GPUs).
"""

from __future__ import annotations

import time

import torch

from features.examples import SequenceExamples
from training.common.device import Device, Precision, autocast
from training.common.loss import retrieval_loss
from training.retrieval.config import TrainConfig
from training.retrieval.model import RetrievalModel


def plain_step(
    model: RetrievalModel,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    config: TrainConfig,
    generator: torch.Generator,
    *,
    device: Device = "cpu",
    precision: Precision = "fp32",
) -> torch.Tensor:
    """One optimizer step of ``model`` on ``batch`` (on ``device``, the forward in ``precision``);
    the loss, as a tensor on ``device`` (reading it waits for the step)."""
    options = config.loss_options(model.num_items)
    length = max(int(batch["lengths"].max()), 1)
    batch = {key: value.to(device) for key, value in batch.items()}
    items = batch["item_indices"][:, :length]
    if options["kind"] == "full":
        negatives = torch.arange(1, model.num_items + 1, device=device)
    else:
        negatives = torch.randint(1, model.num_items + 1, (config.num_negatives,), generator=generator).to(device)
    with autocast(device, precision):
        hidden = model(items, batch["action_ids"][:, :length], batch["timestamps"][:, :length], batch["lengths"])
    history_emb, negative_emb = model.item_embedding(items), model.item_embedding(negatives)
    terms = retrieval_loss(hidden.float(), history_emb, batch, negatives, negative_emb, generator=generator, **options)
    optimizer.zero_grad()
    terms.total.backward()
    optimizer.step()
    return terms.total.detach()


def plain_epochs(config: TrainConfig, train: SequenceExamples, epochs: int, threads: int) -> list[float]:
    """Sequences per second of each epoch of plain single-process training."""
    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    model = RetrievalModel(config.encoder, train.num_items).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
    generator = torch.Generator().manual_seed(config.seed)
    rates = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        batches = train.batches(
            config.batch_size, seed=config.seed, epoch=epoch, shuffle=True, by_length=config.length_bucketing
        )
        for batch in batches:
            plain_step(model, optimizer, batch, config, generator)
        rates.append(len(train) / (time.perf_counter() - started))
    return rates

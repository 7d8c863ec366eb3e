"""Evaluation of next-item retrieval on a split: the rank of each row's target.

A scorer maps a batch to (B, num_items + 1) scores. Items of the row's history and the
padding index are masked out, then the target is ranked against the whole catalogue or,
with ``sampled``, against ``negatives`` random unseen items. Rows without a target, with
an empty history or marked invalid (shard padding) are skipped.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from features.examples import SequenceExamples
from ingestion.schema import ACTION_IDS, POSITIVE_ACTIONS
from training.metrics import mask_seen, sampled_ranks, target_ranks
from training.model import RetrievalModel

Scorer = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def split_ranks(
    scorer: Scorer,
    examples: SequenceExamples,
    *,
    batch_size: int = 256,
    sampled: bool = False,
    negatives: int = 100,
    seed: int = 0,
) -> np.ndarray:
    """0-based target ranks of every evaluable row of ``examples``, in row order."""
    generator = torch.Generator().manual_seed(seed)
    ranks = []
    with torch.no_grad():
        for batch in examples.batches(batch_size):
            keep = batch["valid"] & (batch["targets"] > 0) & (batch["lengths"] > 0)
            if not keep.any():
                continue
            batch = {key: value[keep] for key, value in batch.items()}
            scores = mask_seen(scorer(batch).float().cpu(), batch["item_indices"], batch["lengths"])
            if sampled:
                ranks.append(sampled_ranks(scores, batch["targets"], negatives, generator))
            else:
                ranks.append(target_ranks(scores, batch["targets"]))
    return torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)


def model_scorer(model: RetrievalModel, num_items: int) -> Scorer:
    """Cosine similarity of each row's query to every item of a plain model (eval mode).

    Scores cover items 0..``num_items``; items newer than the model (a grown vocabulary)
    score -inf. Histories must not hold items above ``num_items``.
    """
    model.eval()
    catalog = model.item_vectors()
    unknown = max(0, num_items - model.num_items)
    device = catalog.device

    def scorer(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # Items newer than the model read as row 0, which training never updates.
        inputs = {**batch, "item_indices": batch["item_indices"].masked_fill(batch["item_indices"] > model.num_items, 0)}
        scores = model.user_vectors({key: value.to(device) for key, value in inputs.items()}) @ catalog.T
        return F.pad(scores, (0, unknown), value=float("-inf"))

    return scorer


def popularity_scorer(train: SequenceExamples, num_items: int) -> Scorer:
    """The popularity baseline: how often each item was a positive event in the train split."""
    positive_ids = np.array([ACTION_IDS[action] for action in POSITIVE_ACTIONS])
    real = np.arange(train.max_len)[None, :] < train.lengths[:, None]
    chosen = real & np.isin(train.action_ids, positive_ids) & train.valid[:, None]
    counts = np.bincount(train.item_indices[chosen], minlength=num_items + 1)[: num_items + 1]
    scores = torch.from_numpy(counts.astype(np.float32))
    return lambda batch: scores.unsqueeze(0).expand(len(batch["targets"]), -1)

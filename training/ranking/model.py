"""Multi-task rankers: (history, candidate) -> one logit per task. Plain PyTorch, no TorchRec.

Both rankers share one layout: an item table (``item_embedding`` here, a sharded TorchRec
table in ``training.ranking.sharded_model``) and a ``tower`` that takes the looked-up embeddings.
The tower's parameter names are the same in both forms, so weights move between them with
``training.common.sharded_table.plain_weights`` / ``sharded_weights``.

* **ranker** (target-aware): the history is encoded by the HSTU blocks of retrieval
  (``training.common.hstu.HSTU``, via ``training.common.model.build_encoder``: the same code, not a copy);
  the candidate's embedding attends over the encoded history (target attention: a softmax over
  history positions of query(candidate) . key(h_j) plus a learned bias per bucket of the time
  gap between the exposure and event j); the mixture reads [candidate, attention readout,
  last hidden state (HSTU's next-item query), readout * candidate, last * candidate].
* **dlrm** (baseline): the history is the mean of its token embeddings (item + action, no
  order, no time); the mixture reads [candidate, mean, mean * candidate].
* **Multi-task layer**: MMoE (``experts`` ReLU experts, one softmax gate per task) or a shared
  bottom; then one small MLP head per task, each ending in one logit.

``encode`` runs once per history and ``score`` scores any number of candidates against it
(``(B, M)`` candidates per history), so serving encodes a history once for all its candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ingestion.schema import ACTION_IDS
from training.common.encoders import last_hidden
from training.common.hstu import BUCKETS_PER_OCTAVE
from training.common.model import INIT_RANGE, build_encoder
from training.ranking.config import RankerConfig


@dataclass
class HistoryState:
    """A batch of encoded histories: what ``RankingTower.score`` needs of them."""

    hidden: torch.Tensor  # (B, L, D) per-position states (zero beyond each length)
    summary: torch.Tensor  # (B, D) last hidden state (ranker) or mean token embedding (dlrm)
    items: torch.Tensor  # (B, L) item indices
    action_ids: torch.Tensor  # (B, L)
    timestamps: torch.Tensor  # (B, L) epoch ms
    valid: torch.Tensor  # (B, L) bool

    def matches(self, candidates: torch.Tensor) -> torch.Tensor:
        """(B, M, L) bool: history position j holds candidate m's item."""
        return (candidates.unsqueeze(2) == self.items.unsqueeze(1)) & self.valid.unsqueeze(1)


def gap_buckets(gaps_ms: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Buckets of time gaps as HSTU's relative bias uses them: floor(4 log2(1 + seconds))."""
    seconds = gaps_ms.clamp(min=0).double().div(1000.0)
    return torch.floor(torch.log2(1.0 + seconds) * BUCKETS_PER_OCTAVE).long().clamp(max=num_buckets - 1)


class TargetAttention(nn.Module):
    """Softmax attention of each candidate over its history's positions, with a bias per bucket of
    the time gap to the exposure and one per action where the position holds the candidate itself."""

    def __init__(self, dim: int, time_buckets: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.time_bias = nn.Parameter(torch.zeros(time_buckets))
        self.match_bias = nn.Parameter(torch.zeros(len(ACTION_IDS) + 1))
        self.time_buckets = time_buckets
        self.scale = 1.0 / math.sqrt(dim)

    def forward(
        self, candidates: torch.Tensor, matches: torch.Tensor, history: HistoryState, ts: torch.Tensor
    ) -> torch.Tensor:
        """(B, M, D) readouts for candidate embeddings (B, M, D) exposed at ``ts`` (B,) over the
        (B, L, D) states; ``matches`` (B, M, L) from ``HistoryState.matches``."""
        keys, values = self.key(history.hidden), self.value(history.hidden)
        scores = torch.einsum("bmd,bld->bml", self.query(candidates), keys) * self.scale
        gaps = ts.unsqueeze(1) - history.timestamps  # (B, L)
        scores = scores + self.time_bias[gap_buckets(gaps, self.time_buckets)].unsqueeze(1).to(scores.dtype)
        scores = scores + matches.to(scores.dtype) * self.match_bias[history.action_ids].unsqueeze(1).to(scores.dtype)
        mask = history.valid.unsqueeze(1)
        weights = torch.softmax(scores.masked_fill(~mask, torch.finfo(scores.dtype).min), dim=-1)
        weights = weights * mask  # an empty history reads nothing
        return torch.einsum("bml,bld->bmd", weights, values)


def _mlp(inputs: int, hidden: int, outputs: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, outputs))


class MultiTask(nn.Module):
    """MMoE or shared bottom, then one head (MLP -> logit) per task."""

    def __init__(self, config: RankerConfig, inputs: int) -> None:
        super().__init__()
        self.mmoe = config.mixture == "mmoe"
        count = config.experts if self.mmoe else 1
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(inputs, config.expert_dim), nn.ReLU(), nn.Dropout(config.dropout))
            for _ in range(count)
        )
        self.gates = nn.Linear(inputs, count * len(config.tasks)) if self.mmoe else None
        self.heads = nn.ModuleList(_mlp(config.expert_dim, config.tower_dim, 1, config.dropout) for _ in config.tasks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., T) logits of features (..., inputs)."""
        experts = torch.stack([expert(x) for expert in self.experts], dim=-2)  # (..., E, H)
        if self.gates is None:
            mixed = experts.squeeze(-2).unsqueeze(-2).expand(*x.shape[:-1], len(self.heads), experts.shape[-1])
        else:
            gates = self.gates(x).view(*x.shape[:-1], len(self.heads), len(self.experts)).softmax(dim=-1)
            mixed = gates @ experts  # (..., T, H)
        return torch.cat([head(mixed[..., task, :]) for task, head in enumerate(self.heads)], dim=-1)


class RankingTower(nn.Module):
    """Everything of a ranker but its item table: history encoding, candidate scoring, heads."""

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.encoder.dim
        if config.kind == "ranker":
            self.encoder = build_encoder(config.encoder)
            self.attention: TargetAttention | None = TargetAttention(dim, config.encoder.time_buckets)
            self.actions: nn.Embedding | None = None
            inputs = 5 * dim + len(ACTION_IDS)
        else:
            self.attention = None
            self.actions = nn.Embedding(len(ACTION_IDS) + 1, dim)
            nn.init.normal_(self.actions.weight, std=0.02)
            inputs = 3 * dim
        self.multitask = MultiTask(config, inputs)
        self.wide = nn.Linear(dim, len(config.tasks))  # a linear term of the candidate: per-item rates

    def encode(
        self,
        item_emb: torch.Tensor,
        item_indices: torch.Tensor,
        action_ids: torch.Tensor,
        timestamps: torch.Tensor,
        lengths: torch.Tensor,
    ) -> HistoryState:
        """Histories (B, L) with their item embeddings (B, L, D), encoded once."""
        valid = torch.arange(item_emb.shape[1], device=item_emb.device).unsqueeze(0) < lengths.unsqueeze(1)
        if self.actions is None:
            hidden = self.encoder(item_emb, action_ids, timestamps, lengths)
            summary = last_hidden(hidden, lengths) * (lengths > 0).unsqueeze(1)
        else:
            hidden = (item_emb + self.actions(action_ids)) * valid.unsqueeze(-1)
            summary = hidden.sum(1) / lengths.clamp(min=1).unsqueeze(1).to(hidden.dtype)
        return HistoryState(hidden, summary, item_indices, action_ids, timestamps, valid)

    def score(
        self, history: HistoryState, candidates: torch.Tensor, candidate_ids: torch.Tensor, ts: torch.Tensor
    ) -> torch.Tensor:
        """(B, M, T) logits of candidates (embeddings (B, M, D), item indices (B, M)) exposed at
        ``ts`` (B,) to the B histories."""
        summary = history.summary.unsqueeze(1).expand_as(candidates)
        if self.attention is None:
            features = [candidates, summary, summary * candidates]
        else:
            matches = history.matches(candidate_ids)
            readout = self.attention(candidates, matches, history, ts)
            # How often the user did each action with this very item in the history (log scale).
            actions = F.one_hot(history.action_ids, len(ACTION_IDS) + 1)[..., 1:].to(candidates.dtype)  # (B, L, A)
            counts = torch.log1p(torch.einsum("bml,bla->bma", matches.to(candidates.dtype), actions))
            features = [candidates, readout, summary, readout * candidates, summary * candidates, counts]
        return self.multitask(torch.cat(features, dim=-1)) + self.wide(candidates)


class RankingModel(nn.Module):
    """The plain ranker: ``nn.Embedding`` item rows 0..num_items (0 = padding) + the tower."""

    def __init__(self, config: RankerConfig, num_items: int) -> None:
        super().__init__()
        self.config = config
        self.num_items = num_items
        self.item_embedding = nn.Embedding(num_items + 1, config.encoder.dim)
        nn.init.uniform_(self.item_embedding.weight, -INIT_RANGE, INIT_RANGE)
        self.tower = RankingTower(config)

    def encode(
        self, item_indices: torch.Tensor, action_ids: torch.Tensor, timestamps: torch.Tensor, lengths: torch.Tensor
    ) -> HistoryState:
        return self.tower.encode(self.item_embedding(item_indices), item_indices, action_ids, timestamps, lengths)

    def score(self, history: HistoryState, candidates: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        """(B, M, T) logits of candidate item indices (B, M)."""
        return self.tower.score(history, self.item_embedding(candidates), candidates, ts)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T) logits of a batch of RankingExamples (one candidate per row)."""
        history = self.encode(batch["item_indices"], batch["action_ids"], batch["timestamps"], batch["lengths"])
        return self.score(history, batch["candidates"].unsqueeze(1), batch["ts"]).squeeze(1)


def ranking_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Sum over tasks of weight x mean BCE (over valid rows) of (B, T) logits and 0/1 labels."""
    losses = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")  # (B, T)
    rows = valid.float().unsqueeze(1)
    per_task = (losses * rows).sum(0) / rows.sum().clamp(min=1.0)
    return (per_task * weights).sum()

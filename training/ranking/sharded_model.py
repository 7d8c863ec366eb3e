"""The sharded twin of ``training.ranking.model.RankingModel``: the item table as the same
TorchRec table retrieval shards (``training.common.sharded_table``), so
``training.common.sharding.shard_model`` wraps it in DistributedModelParallel unchanged:
row-wise shards, a fused optimizer applied in backward, the tower replicated and
data-parallel. Weights convert to the plain model with
``training.common.sharded_table.plain_weights`` (the tower's names are the same in both).
"""

from __future__ import annotations

import torch
from torchrec import KeyedJaggedTensor

from training.common.sharded_table import CANDIDATES, HISTORY, ShardedTableModel
from training.ranking.config import RankerConfig
from training.ranking.model import RankingTower


class ShardedRankingModel(ShardedTableModel):
    """Training model of a ranker: build it with ``table_device=torch.device("meta")`` for DMP."""

    def __init__(self, config: RankerConfig, num_items: int, table_device: torch.device | None = None) -> None:
        super().__init__(config.encoder.dim, num_items, table_device)
        self.ranker_config = config
        self.tower = RankingTower(config)

    def forward(
        self,
        lookups: KeyedJaggedTensor,
        item_indices: torch.Tensor,
        candidate_ids: torch.Tensor,
        action_ids: torch.Tensor,
        timestamps: torch.Tensor,
        lengths: torch.Tensor,
        ts: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (B, T), hidden states (B, L, D), history embeddings (B, L, D), embeddings of
        the extra looked-up items (U, D)). ``lookups`` from ``sharded_table.lookup_input(item_indices,
        lengths, cat(candidate_ids, extra))``: the B candidates first, then U extra items (the
        next-item loss's negatives). The ids themselves give the target-aware match features."""
        embedded = self.item_table(lookups)
        dim = self.dim
        history_emb = embedded[HISTORY].to_padded_dense(action_ids.shape[1])[..., :dim]
        looked_up = embedded[CANDIDATES].values()[:, :dim]
        candidates, extra = looked_up[: len(candidate_ids)], looked_up[len(candidate_ids) :]
        history = self.tower.encode(history_emb, item_indices, action_ids, timestamps, lengths)
        logits = self.tower.score(history, candidates.unsqueeze(1), candidate_ids.unsqueeze(1), ts).squeeze(1)
        return logits, history.hidden, history_emb, extra

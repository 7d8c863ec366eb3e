"""Retrieval models: an item table plus a sequential encoder, scored by cosine similarity.

``ShardedRetrievalModel`` keeps items in a TorchRec ``EmbeddingCollection`` (one table,
``item``, read by two features: the ``history`` of each row and the batch's
``candidates``) so DistributedModelParallel can shard it; it is what Ray Train workers
train. ``RetrievalModel`` keeps the same rows in a plain ``nn.Embedding``: the form a
trained model is exported in, evaluated in one process, served, and the plain-PyTorch
baseline of the benchmark. Both share the encoder classes and parameter names
(``encoder.*``), so weights move between them unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor

from training.config import EncoderConfig
from training.encoders import SequenceEncoder, last_hidden
from training.hstu import HSTU
from training.sasrec import SASRec

TABLE = "item"
HISTORY = "history"
CANDIDATES = "candidates"
TABLE_WEIGHT = f"item_table.embeddings.{TABLE}.weight"  # state-dict key of the sharded table
PLAIN_WEIGHT = "item_embedding.weight"  # the same rows in RetrievalModel
INIT_RANGE = 0.035  # item rows start uniform in [-r, r] (std 0.02, as the HSTU reference)


def table_width(dim: int) -> int:
    """Columns of the sharded item table: FBGEMM's fused kernels need a multiple of 4, so
    dim 50 (the reference) is stored in 52 columns whose last 2 are never read."""
    return -(-dim // 4) * 4


def build_encoder(config: EncoderConfig) -> SequenceEncoder:
    """The encoder ``config.kind`` names."""
    encoders: dict[str, type[SequenceEncoder]] = {"hstu": HSTU, "sasrec": SASRec}
    return encoders[config.kind](config)


class RetrievalModel(nn.Module):
    """Plain single-process model: ``nn.Embedding`` rows 0..num_items (0 = padding) + encoder."""

    def __init__(self, config: EncoderConfig, num_items: int) -> None:
        super().__init__()
        self.config = config
        self.num_items = num_items
        self.item_embedding = nn.Embedding(num_items + 1, config.dim)
        nn.init.uniform_(self.item_embedding.weight, -INIT_RANGE, INIT_RANGE)
        self.encoder = build_encoder(config)

    def forward(
        self, item_indices: torch.Tensor, action_ids: torch.Tensor, timestamps: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """(B, L, D) hidden states of right-padded histories (B, L)."""
        return self.encoder(self.item_embedding(item_indices), action_ids, timestamps, lengths)

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D) L2-normalised queries: the hidden state after each row's history."""
        length = max(int(batch["lengths"].max()), 1)
        hidden = self(*(batch[key][:, :length] for key in ("item_indices", "action_ids", "timestamps")), batch["lengths"])
        return F.normalize(last_hidden(hidden, batch["lengths"]), dim=-1)

    def item_vectors(self) -> torch.Tensor:
        """(num_items + 1, D) L2-normalised item embeddings (row 0 is padding)."""
        return F.normalize(self.item_embedding.weight, dim=-1)


class ShardedRetrievalModel(nn.Module):
    """Training model: the item table as an EmbeddingCollection for DistributedModelParallel.

    Build it with ``table_device=torch.device("meta")``: DMP then allocates only each
    rank's shard of the table and initialises it uniform in [-INIT_RANGE, INIT_RANGE].
    The table has ``table_width(dim)`` columns; lookups keep the first ``dim``.
    """

    def __init__(self, config: EncoderConfig, num_items: int, table_device: torch.device | None = None) -> None:
        super().__init__()
        self.config = config
        self.num_items = num_items
        table = EmbeddingConfig(
            name=TABLE,
            embedding_dim=table_width(config.dim),
            num_embeddings=num_items + 1,
            feature_names=[HISTORY, CANDIDATES],
            weight_init_min=-INIT_RANGE,
            weight_init_max=INIT_RANGE,
        )
        self.item_table = EmbeddingCollection(tables=[table], device=table_device)
        self.encoder = build_encoder(config)

    def forward(
        self, lookups: KeyedJaggedTensor, action_ids: torch.Tensor, timestamps: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(hidden (B, L, D), history embeddings (B, L, D), candidate embeddings (C, D))."""
        embedded = self.item_table(lookups)
        dim = self.config.dim
        history_emb = embedded[HISTORY].to_padded_dense(action_ids.shape[1])[..., :dim]
        hidden = self.encoder(history_emb, action_ids, timestamps, lengths)
        return hidden, history_emb, embedded[CANDIDATES].values()[:, :dim]


def lookup_input(item_indices: torch.Tensor, lengths: torch.Tensor, candidate_ids: torch.Tensor) -> KeyedJaggedTensor:
    """The table lookups of a batch: each row's history items, and ``candidate_ids`` in row 0."""
    positions = torch.arange(item_indices.shape[1], device=item_indices.device).unsqueeze(0)
    history = item_indices[positions < lengths.unsqueeze(1)]
    candidate_lengths = torch.zeros_like(lengths)
    candidate_lengths[0] = len(candidate_ids)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=[HISTORY, CANDIDATES],
        values=torch.cat([history, candidate_ids]),
        lengths=torch.cat([lengths, candidate_lengths]),
    )

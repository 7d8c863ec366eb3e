"""The one scoring path of retrieval: history -> query embedding -> scores and top-k over the catalogue.

Worker validation, test evaluation, `streamrec evaluate` and serving all score through a
``Retriever``. It holds a plain encoder and the item rows, nothing distributed: build it from
an exported model directory (``from_directory``, which never imports TorchRec) or, inside a
training worker, from the live encoder and the gathered item table. A query is the encoder's
hidden state after the last event of the history (for a masked-item model, such as BERT4Rec, its
hidden state at a mask token appended to the history); an item's score is the model's scoring
(``EncoderConfig.scoring``, ``training.common.scoring``) of the query and its row: the cosine
similarity, or the dot product. Queries and ``item_vectors`` are held as scored vectors (unit rows
for cosine), so every score is their inner product. The catalogue is scored in chunks, so a top-k
(or a rank) over a million items never holds a (batch x catalogue) matrix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from training.common.bert4rec import append_mask_token
from training.common.encoders import SequenceEncoder, last_hidden
from training.common.scoring import scored_vectors
from training.retrieval.io import ModelInfo, load_model

DEFAULT_CHUNK_ITEMS = 65_536


class Retriever:
    """Queries and top-k of one model; item index 0 is padding and never retrieved."""

    def __init__(self, encoder: SequenceEncoder, item_rows: torch.Tensor, info: ModelInfo | None = None) -> None:
        """``item_rows``: (num_items + 1, dim) raw item embeddings, row i = item index i."""
        self.encoder = encoder
        self.info = info
        self.device = item_rows.device
        self.item_rows = item_rows.detach()
        self.scoring = encoder.config.scoring
        self.item_vectors = scored_vectors(self.item_rows.float(), self.scoring)
        self.num_items = item_rows.shape[0] - 1
        self.max_len = encoder.config.max_len
        self.masked_query = encoder.config.training_objective == "masked_item"

    @classmethod
    def from_directory(cls, directory: Path | str, device: str = "cpu") -> Retriever:
        """The retriever of an exported model directory (``training.retrieval.io`` layout), on ``device``."""
        model, info = load_model(directory)
        model.to(device)
        return cls(model.encoder, model.item_embedding.weight, info)

    def queries(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D) queries (``as_queries``) of right-padded histories (``item_indices``,
        ``action_ids``, ``timestamps``, ``lengths``). Items the model does not know (newer
        than its vocabulary) read as padding. Histories longer than ``max_len`` must be cut first
        (a masked-item model's query then drops the oldest event to make room for its mask token)."""
        lengths = batch["lengths"].to(self.device)
        width = max(int(lengths.max()), 1) if len(lengths) else 1
        items = batch["item_indices"][:, :width].to(self.device)
        items = items.masked_fill(items > self.num_items, 0)
        actions = batch["action_ids"][:, :width].to(self.device)
        timestamps = batch["timestamps"][:, :width].to(self.device)
        if self.masked_query:
            cut = {"item_indices": items, "action_ids": actions, "timestamps": timestamps, "lengths": lengths}
            query = append_mask_token(cut, self.max_len)
            items, actions, timestamps, lengths = (query[key] for key in cut)
        with torch.inference_mode():
            hidden = self.encoder(self.item_rows[items], actions, timestamps, lengths)
            return self.as_queries(last_hidden(hidden, lengths))

    def as_queries(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, D) float32 queries of the encoder's hidden states (B, D) under the model's scoring:
        unit rows (cosine) or the states themselves (dot)."""
        return scored_vectors(hidden.float(), self.scoring)

    def score_chunks(
        self, queries: torch.Tensor, chunk_items: int = DEFAULT_CHUNK_ITEMS
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """(first item index, (B, C) scores) over the catalogue in chunks; index 0 scores -inf."""
        with torch.inference_mode():
            for start in range(0, self.num_items + 1, chunk_items):
                scores = queries @ self.item_vectors[start : start + chunk_items].T
                if start == 0:
                    scores[:, 0] = float("-inf")
                yield start, scores

    def top_k(
        self,
        batch: dict[str, torch.Tensor],
        k: int,
        exclude: Sequence[torch.Tensor] | None = None,
        chunk_items: int = DEFAULT_CHUNK_ITEMS,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, item indices), each (B, k'), best first, k' = min(k, items); ``exclude[b]``
        holds item indices row b must not get (seen, disliked...)."""
        return self.top_k_of(self.queries(batch), k, exclude, chunk_items)

    def top_k_of(
        self,
        queries: torch.Tensor,
        k: int,
        exclude: Sequence[torch.Tensor] | None = None,
        chunk_items: int = DEFAULT_CHUNK_ITEMS,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``top_k`` for ready queries (B, D): a running top-k over the catalogue's chunks."""
        k = min(k, self.num_items)
        best_scores = torch.full((len(queries), 0), float("-inf"), device=self.device)
        best_items = torch.zeros((len(queries), 0), dtype=torch.long, device=self.device)
        for start, scores in self.score_chunks(queries, chunk_items):
            if exclude is not None:
                mask_items(scores, exclude, start)
            chunk_scores, chunk_items_found = scores.topk(min(k, scores.shape[1]), dim=1)
            merged_scores = torch.cat([best_scores, chunk_scores], dim=1)
            merged_items = torch.cat([best_items, chunk_items_found + start], dim=1)
            best_scores, order = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
            best_items = merged_items.gather(1, order)
        return best_scores, best_items


def mask_items(scores: torch.Tensor, items: Sequence[torch.Tensor], start: int) -> torch.Tensor:
    """Set ``scores`` (B, C: items start..start+C-1) to -inf at each row's ``items[b]``; in place."""
    width = scores.shape[1]
    for row, row_items in enumerate(items):
        local = row_items.to(scores.device) - start
        local = local[(local >= 0) & (local < width)]
        scores[row, local] = float("-inf")
    return scores

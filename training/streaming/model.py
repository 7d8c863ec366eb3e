"""The follow job's model: the base version's encoder and item rows, with headroom rows for
items first seen after it, trained in one process, remembering which rows changed.

The item rows are a plain ``nn.Embedding`` (``sparse=True``, row 0 the padding row, never
trained) of ``capacity + 1`` rows: the base's ``base_items + 1`` rows, then
``train.follow_item_headroom`` rows that items take in index order as the vocabulary grows
(``grow``); rows past ``known_items`` are neither looked up nor sampled as negatives. The table
is trained by row-wise Adagrad (FBGEMM's ``EXACT_ROWWISE_ADAGRAD`` rule: one accumulator per row,
the mean of the row's squared gradient), the base's table optimizer on CPU, so a row moves only
in a step that looked it up: the rows a step changes are the rows its batch looked up (history
items and candidates), which ``changed`` collects. The encoder is trained by Adam, as the base's
dense parameters are. Both optimizers start afresh (a delta carries no optimizer state); the
table trains at ``warm_start_lr_scale`` times its learning rate, which the follow job's config sets
to ``training.streaming.follow.FOLLOW_TABLE_LR_SCALE`` unless it names one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch import nn

from training.common.bert4rec import mask_action_ids, mask_positions
from training.common.config import EncoderConfig
from training.common.loss import LossTerms, retrieval_loss
from training.common.model import INIT_RANGE, PLAIN_WEIGHT, build_encoder
from training.retrieval.config import TrainConfig
from training.streaming.deltas import ModelDelta
from training.streaming.dense import decode_dense_weights, encode_dense_weights

ENCODER_PREFIX = "encoder."  # the encoder's keys in a RetrievalModel state dict
ADAGRAD_EPS = 1e-8  # FBGEMM's default


class FollowModel:
    """The base's weights plus headroom rows; ``train_step`` trains it on one batch."""

    def __init__(
        self,
        encoder_config: EncoderConfig,
        weights: Mapping[str, torch.Tensor],
        capacity: int,
        config: TrainConfig,
    ) -> None:
        """``weights``: a RetrievalModel state dict (``training.retrieval.io.read_weights``);
        ``capacity``: the largest item index the table holds (base items + headroom)."""
        base_rows = weights[PLAIN_WEIGHT]
        self.base_items = base_rows.shape[0] - 1
        if capacity < self.base_items:
            raise ValueError(f"capacity {capacity} is below the base's {self.base_items} items")
        optimizer, table_lr = config.warm_started(use_gpu=False).table_optimizer(use_gpu=False)
        if optimizer != "rowwise_adagrad":
            raise ValueError(
                f"the follow job trains the item table with row-wise Adagrad (the CPU default), not {optimizer}: "
                "other optimizers move rows the steps did not look up, which a delta of the looked-up rows misses"
            )
        self.config = config
        self.capacity = capacity
        self.known_items = self.base_items
        self.dim = encoder_config.dim
        generator = torch.Generator().manual_seed(config.seed)
        self.table = nn.Embedding(capacity + 1, self.dim, padding_idx=0, sparse=True)
        with torch.no_grad():
            self.table.weight.uniform_(-INIT_RANGE, INIT_RANGE, generator=generator)
            self.table.weight[: self.base_items + 1] = base_rows.float()
        self.encoder = build_encoder(encoder_config)
        self.encoder.load_state_dict(
            {key.removeprefix(ENCODER_PREFIX): value for key, value in weights.items() if key != PLAIN_WEIGHT}
        )
        self.encoder.train()
        self.table_lr = table_lr
        self.row_sums = torch.zeros(capacity + 1)
        self.dense_optimizer = torch.optim.Adam(
            self.encoder.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
        self.generator = generator
        self.changed = np.zeros(capacity + 1, dtype=bool)
        self.dense_changed = False

    def grow(self, vocabulary_items: int) -> int:
        """Give rows to the items up to ``vocabulary_items`` that fit; returns how many got one."""
        before = self.known_items
        self.known_items = max(self.known_items, min(vocabulary_items, self.capacity))
        self.changed[before + 1 : self.known_items + 1] = True  # a new row's first vector is news too
        return self.known_items - before

    def train_step(self, batch: dict[str, torch.Tensor]) -> LossTerms:
        """One optimizer step on a batch of ``SequenceExamples`` (items <= ``known_items``)."""
        config, encoder_config = self.config, self.encoder.config
        options = config.loss_options(self.known_items)
        length = max(int(batch["lengths"].max()), 1)
        items = batch["item_indices"][:, :length]
        if int(items.max()) > self.known_items:
            raise ValueError(f"a batch looks up item {int(items.max())}, beyond the {self.known_items} with rows")
        if options["kind"] == "full":
            candidates = torch.arange(1, self.known_items + 1)
        else:
            candidates = torch.randint(1, self.known_items + 1, (config.num_negatives,), generator=self.generator)
        action_ids, masked = batch["action_ids"][:, :length], None
        if encoder_config.training_objective == "masked_item":
            masked = mask_positions(batch["lengths"], length, encoder_config.mask_prob, encoder_config.max_len,
                                    self.generator)  # fmt: skip
            action_ids = mask_action_ids(action_ids, masked)
        # Padding positions read zeros, as the sharded table's padded lookups give the base's training.
        history_emb = self.table(items) * (items != 0).unsqueeze(-1)
        candidate_emb = self.table(candidates)
        hidden = self.encoder(history_emb, action_ids, batch["timestamps"][:, :length], batch["lengths"])
        terms = retrieval_loss(
            hidden, history_emb, batch, candidates, candidate_emb, generator=self.generator, masked=masked,
            prefix_dims=encoder_config.matryoshka_dims, **options,
        )  # fmt: skip
        self.dense_optimizer.zero_grad()
        self.table.weight.grad = None
        terms.total.backward()
        self.dense_optimizer.step()
        self._table_step()
        self.dense_changed = True
        return terms

    def _table_step(self) -> None:
        """Row-wise Adagrad on the rows the step looked up (the sparse gradient's rows)."""
        grad = self.table.weight.grad
        if grad is None:
            return
        grad = grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        looked_up = rows != 0  # the padding row has no gradient (padding_idx) and never moves
        rows, values = rows[looked_up], values[looked_up]
        with torch.no_grad():
            self.row_sums[rows] += values.pow(2).mean(dim=1)
            scale = self.table_lr / (self.row_sums[rows].sqrt() + ADAGRAD_EPS)
            self.table.weight[rows] -= scale.unsqueeze(1) * values
        self.changed[rows.numpy()] = True

    # Deltas ------------------------------------------------------------------------------------
    def changed_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices, float32 vectors) of the rows changed since ``mark_published``."""
        indices = np.flatnonzero(self.changed).astype(np.int64)
        return indices, self.table.weight.detach()[torch.from_numpy(indices)].numpy().astype(np.float32)

    def dense_weights(self) -> bytes | None:
        """The encoder's weights (``training.streaming.dense`` bytes) when a step changed them."""
        return encode_dense_weights(self.encoder.state_dict()) if self.dense_changed else None

    def mark_published(self) -> None:
        self.changed[:] = False
        self.dense_changed = False

    def apply(self, delta: ModelDelta) -> None:
        """Take a published delta's rows, encoder weights and new items (a restarted job
        rebuilding its state as the base plus its deltas; optimizer state starts afresh)."""
        if delta.item_indices.size and int(delta.item_indices.max()) > self.capacity:
            raise ValueError(
                f"delta {delta.position} holds item index {int(delta.item_indices.max())}, beyond this table's "
                f"{self.capacity} (train.follow_item_headroom smaller than when it was published?)"
            )
        with torch.no_grad():
            self.table.weight[torch.from_numpy(delta.item_indices)] = torch.from_numpy(delta.item_vectors.copy())
        if delta.dense_weights is not None:
            self.encoder.load_state_dict(decode_dense_weights(delta.dense_weights))
        if delta.new_items:
            self.known_items = max(self.known_items, max(delta.new_items.values()))

    def state(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The model as a RetrievalModel state dict over its known rows (tests compare states)."""
        yield PLAIN_WEIGHT, self.table.weight.detach()[: self.known_items + 1]
        for key, value in self.encoder.state_dict().items():
            yield ENCODER_PREFIX + key, value

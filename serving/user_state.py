"""LRURec's live user states: a replica answers an LRURec model from each user's recurrent state
(per block, as ``LRURec.step`` keeps it) instead of re-encoding the user's history per request.

Used only when the served encoder is LRURec (``LRURecStates.follows``) and only for stored users
(a history given in the request body is re-encoded, as for every model). Per stored user:

* built on the user's first request (or after an invalidation) from a full re-encode of the
  known events of the held history, the last ``max_len`` of them: exactly what ``Catalog.encode``
  reads, with each block's state at the last event kept as well (``encode_states``, the same
  parallel scan as training's ``LRURec.encode``);
* advanced by one ``LRURec.step`` per event the online history added at the end since
  (``HistoryRevision.appended``), oldest first, on the user's next request, so a request costs
  O(new events x D²) whatever the history's length; events of items the catalogue does not know
  are skipped, as the re-encode leaves them out;
* built again when the history was rewritten rather than extended (an event inserted before the
  end, ``HistoryRevision.reordered``), when more events arrived than the held window keeps (some
  were never seen), or when the history is another instance's (a restarted shard);
* all dropped when the model changes: a new version, a reload or a model delta (item rows or
  encoder weights) makes a new ``Retriever``, and states computed with the old one are never mixed
  with the new weights; each user's is rebuilt on their next request.

At most ``serve.lrurec_state_users`` users are kept, least recently asked for dropped first; a
dropped user is rebuilt on their next request. 0 turns the states off: LRURec then re-encodes the
last ``max_len`` events per request, as every other model does.

The state is the recurrence over every event since it was built, which is LRURec's point: once a
user has more than ``max_len`` events since then, it still remembers the older ones (decayed by
λ^age), where a re-encode reads the last ``max_len`` alone. Up to ``max_len`` events it equals a
re-encode (tests/serving/test_user_state.py, atol 1e-4). Replicas that built a user's state at
different times may then differ by those decayed terms; ``lrurec_state_users = 0`` is the switch
back to the windowed re-encode (docs/serving.md, "LRURec: answering from the live state").

Not thread-safe: one replica's batches run one at a time on its event loop.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from ingestion.schema import ACTION_IDS
from serving.catalog import Catalog, KnownEvents
from serving.history.store import HistoryRevision
from training.common.lrurec import LRUBlock, LRURec, linear_scan
from training.retrieval.retriever import Retriever

StoredEvents = Sequence[tuple[str, str, int]]  # (item id, action, ts), oldest first, as the history holds them


@dataclass
class _UserState:
    """One user's state after the events up to ``revision``."""

    revision: HistoryRevision
    layers: np.ndarray  # (blocks, 2·D) complex64: each block's recurrent state after the last known event
    query: np.ndarray  # (D,) float32: the query (Retriever.as_queries) of the encoder's output after that event


def encode_states(retriever: Retriever, histories: list[KnownEvents]) -> tuple[torch.Tensor, torch.Tensor]:
    """(queries (B, D), states (B, blocks, 2·D) complex) of non-empty known histories, each cut
    to its last ``max_len`` events as ``Catalog.encode`` cuts it: LRURec's ``encode`` with every
    block's recurrent state at each row's last event kept."""
    encoder = cast(LRURec, retriever.encoder)
    cut = [history[-retriever.max_len :] for history in histories]
    width = max(len(history) for history in cut)
    items = torch.zeros((len(cut), width), dtype=torch.long)
    actions = torch.zeros((len(cut), width), dtype=torch.long)
    for row, history in enumerate(cut):
        items[row, : len(history)] = torch.tensor([event[0] for event in history])
        actions[row, : len(history)] = torch.tensor([ACTION_IDS[event[1]] for event in history])
    lengths = torch.tensor([len(history) for history in cut])
    valid = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    rows, last = torch.arange(len(cut)), lengths - 1
    layers = []
    with torch.inference_mode():
        x = encoder.input_norm(encoder.inputs(retriever.item_rows[items], actions, valid))
        for block in encoder.blocks:
            unit = cast(LRUBlock, block).recurrence
            states = linear_scan(unit.decay(), unit.driven(x))  # right padding comes after row's last event
            layers.append(states[rows, last])
            x = cast(LRUBlock, block).feed_forward(unit.read(states, x))
        return retriever.as_queries(x[rows, last]), torch.stack(layers, dim=1)


def step_states(
    retriever: Retriever, layers: torch.Tensor, new: list[KnownEvents]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(queries (B, D), states (B, blocks, 2·D)) after ``new[b]`` (at least one known event per
    row, oldest first) from ``layers``: one ``LRURec.step`` per event, the rows that have a j-th
    event stepped together."""
    encoder = cast(LRURec, retriever.encoder)
    layers = layers.clone()
    hidden = torch.zeros((len(new), retriever.item_rows.shape[1]))
    with torch.inference_mode():
        for j in range(max(len(events) for events in new)):
            active = [row for row, events in enumerate(new) if len(events) > j]
            rows = torch.tensor(active)
            items = torch.tensor([new[row][j][0] for row in active])
            actions = torch.tensor([ACTION_IDS[new[row][j][1]] for row in active])
            state = list(layers[rows].unbind(dim=1))
            out, state = encoder.step(state, retriever.item_rows[items], actions)
            layers[rows] = torch.stack(state, dim=1)
            hidden[rows] = out.float()
        return retriever.as_queries(hidden), layers


class LRURecStates:
    """The LRURec states of at most ``max_users`` stored users of one replica (module docstring)."""

    def __init__(self, max_users: int) -> None:
        if max_users < 0:
            raise ValueError(f"max_users must be at least 0, not {max_users}")
        self.max_users = max_users
        self._users: OrderedDict[str, _UserState] = OrderedDict()  # least recently asked for first
        self._retriever: Retriever | None = None  # the weights the held states were computed with
        self._model = ""
        self.counts = {"built": 0, "stepped": 0, "events_stepped": 0, "reused": 0, "invalidations": 0, "evicted": 0}

    def follows(self, catalog: Catalog) -> bool:
        """Whether requests to ``catalog`` are answered from states: an LRURec encoder, states on."""
        return self.max_users > 0 and isinstance(catalog.retriever.encoder, LRURec)

    def __len__(self) -> int:
        return len(self._users)

    def clear(self) -> None:
        """Drop every held state (each user's is built again on their next request)."""
        self._users.clear()

    def release(self) -> None:
        """Drop every state and the weights they follow (another kind of model serves now)."""
        self.clear()
        self._retriever = None
        self._model = ""

    def queries(self, catalog: Catalog, users: Sequence[tuple[str, HistoryRevision, StoredEvents]]) -> np.ndarray:
        """(B, D) float32 queries of stored users, each given with the revision and the events of
        their history now; every history holds at least one event the catalogue knows."""
        self._adopt(catalog)
        queries = np.empty((len(users), catalog.retriever.item_rows.shape[1]), dtype=np.float32)
        build: list[int] = []
        step: list[tuple[int, KnownEvents]] = []
        for row, (user_id, revision, events) in enumerate(users):
            held = self._users.get(user_id)
            added = -1 if held is None else _added_since(held.revision, revision, len(events))
            if held is None or added < 0:
                build.append(row)
                continue
            self._users.move_to_end(user_id)
            new = catalog.known(events[len(events) - added :])
            if new:
                step.append((row, new))
            else:
                held.revision = revision  # only unknown items arrived: the re-encode leaves them out too
                queries[row] = held.query
                self.counts["reused"] += 1
        if build:
            built, layers = encode_states(catalog.retriever, [catalog.known(users[row][2]) for row in build])
            self._keep(users, build, built, layers)
            queries[build] = built.numpy()
            self.counts["built"] += len(build)
        if step:
            rows = [row for row, _ in step]
            start = torch.from_numpy(np.stack([self._users[users[row][0]].layers for row in rows]))
            stepped, layers = step_states(catalog.retriever, start, [new for _, new in step])
            self._keep(users, rows, stepped, layers)
            queries[rows] = stepped.numpy()
            self.counts["stepped"] += len(rows)
            self.counts["events_stepped"] += sum(len(new) for _, new in step)
        return queries

    def status(self) -> dict[str, Any]:
        """A JSON-able report: the model the states follow, users held, the bytes of one user's
        arrays, and how requests were answered (built, stepped, reused) since the replica started."""
        encoder = None if self._retriever is None else self._retriever.encoder
        dim, blocks = (0, 0) if encoder is None else (encoder.config.dim, encoder.config.num_blocks)
        return {
            "model": self._model or None,
            "users": len(self._users),
            "max_users": self.max_users,
            "blocks": blocks,
            "state_dim": 2 * dim,
            "bytes_per_user": state_bytes(dim, blocks),
            **self.counts,
        }

    def _adopt(self, catalog: Catalog) -> None:
        """Drop every state when ``catalog``'s weights are not those the states were computed with."""
        if catalog.retriever is self._retriever:
            return
        if self._users:
            self.counts["invalidations"] += 1
        self.clear()
        self._retriever = catalog.retriever  # held, so its identity cannot be reused by a new one
        self._model = f"v{catalog.version}" + ("" if catalog.delta is None else f" #{catalog.delta.sequence}")

    def _keep(
        self,
        users: Sequence[tuple[str, HistoryRevision, StoredEvents]],
        rows: list[int],
        queries: torch.Tensor,
        layers: torch.Tensor,
    ) -> None:
        """Hold the new states of ``rows`` (most recently asked for), then drop the least recent past max_users."""
        for position, row in enumerate(rows):
            user_id, revision, _ = users[row]
            held = _UserState(revision, layers[position].numpy().copy(), queries[position].numpy().copy())
            self._users[user_id] = held
            self._users.move_to_end(user_id)
        while len(self._users) > self.max_users:
            self._users.popitem(last=False)
            self.counts["evicted"] += 1


def state_bytes(dim: int, blocks: int) -> int:
    """The array bytes of one user's state: each block's complex64 state of 2·dim, and the float32 query."""
    return blocks * 2 * dim * 8 + dim * 4


def _added_since(held: HistoryRevision, now: HistoryRevision, window: int) -> int:
    """How many of the ``window`` held events were added at the end since ``held``; -1 when the
    state cannot follow them (another history instance, events reordered, or more added than held)."""
    added = now.appended - held.appended
    if now.store != held.store or now.reordered != held.reordered or not 0 <= added <= window:
        return -1
    return added

"""Time-ordered (prequential) evaluation of retrieval, beside leave-last-out.

A model trained on events before ``T`` is scored on every positive event in ``(T, T + W]``
as next-item prediction from that user's history up to the event (the events before it in the
user's sequence, the last ``max_len``). Candidates are the items the model knows that exist at
the event's time (first seen at or before it, ``features/item_vocab.first_seen_ts``), under
both protocols of ``training.retrieval.evaluation``: the user's seen items filtered, and not.
Beside HR@K, NDCG@K and MRR the result holds the share of targets the model cannot score
(items newer than its vocabulary: their rank is infinite) and NDCG on the targets launched
after ``T`` (first seen after it), where a stale model loses most.

Scoring goes through the one path every evaluation uses: the ``Retriever``'s queries and
chunked scores, ranked by ``training.retrieval.evaluation.split_ranks``; the only addition is
a mask of the items that do not exist yet at each row's event (``_AtEventTime``).

Events come from ``features/user_sequences`` at the versions read, which keeps the last
``features.max_len`` events per user: a window's events that fell out of a user's stored
window are not scored; ``truncated_users`` counts the users whose stored events start inside
the window (their earlier events in it may be missing).

Bad input: ``W <= 0`` or ``T`` before the first stored event raise ``ValueError``; a window
without positive events gives an explicit empty result (``WindowEvaluation.empty``, no
metrics); a model that knows none of the window's targets raises ``NoOverlapError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from features.examples import SequenceExamples
from features.splits import IS_POSITIVE, FlatSequences, gather
from training.retrieval.evaluation import LinearScorer, SplitRanks, split_metrics, split_ranks
from training.retrieval.metrics import ranking_metrics
from training.retrieval.retriever import DEFAULT_CHUNK_ITEMS

WINDOW_KS = (10, 50)
PREFIX = "window"  # MLflow keys: window_ndcg_10, window_all_hr_50, window_unknown_target_share, ...
NEVER = np.iinfo(np.int64).max  # first_seen of an item the vocabulary read does not hold


DURATION_UNITS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str) -> int:
    """Milliseconds of ``text``: an integer with an optional unit (ms, s, m, h, d; none = ms): ``90m``, ``1h``."""
    value = text.strip().lower()
    unit = next((u for u in sorted(DURATION_UNITS, key=len, reverse=True) if value.endswith(u)), "")
    number = value[: len(value) - len(unit)] if unit else value
    try:
        return int(float(number) * DURATION_UNITS[unit or "ms"])
    except ValueError as error:
        raise ValueError(f"{text!r} is not a duration (a number with ms, s, m, h or d)") from error


def parse_time_ms(text: str) -> int:
    """Epoch ms of ``text``: epoch milliseconds, or an ISO-8601 time (UTC unless it says otherwise)."""
    from datetime import UTC, datetime

    if text.strip().lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as error:
        raise ValueError(f"{text!r} is neither epoch milliseconds nor an ISO-8601 time") from error
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000)


class NoOverlapError(ValueError):
    """The model knows none of the window's target items: nothing it could be scored on."""


@dataclass(frozen=True)
class TimeWindow:
    """The window ``(start_ms, start_ms + length_ms]`` of event timestamps (epoch ms)."""

    start_ms: int
    length_ms: int

    def __post_init__(self) -> None:
        if self.length_ms <= 0:
            raise ValueError(f"the window must be longer than 0 ms, got {self.length_ms}")

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.length_ms

    def describe(self) -> str:
        return f"({self.start_ms}, {self.end_ms}] ({self.length_ms / 3_600_000:g} h)"


@dataclass(frozen=True)
class WindowRows:
    """One row per positive event of the window that has a history: the examples to score."""

    examples: SequenceExamples
    event_ts: np.ndarray  # (N,) ts of each row's target event
    without_history: int  # positive events of the window that were a user's first stored event
    truncated_users: int  # users whose stored events start inside the window


def window_rows(
    user_ids: np.ndarray,
    flat: FlatSequences,
    window: TimeWindow,
    max_len: int,
    num_items: int,
    stored_max_len: int | None = None,
) -> WindowRows:
    """The rows of ``window`` from users' flattened sequences (``features.reader.read_sequences``).

    ``num_items`` is the vocabulary's largest index; ``stored_max_len`` the features'
    ``max_len`` (a user with that many stored events may have lost older ones)."""
    if len(flat.timestamps) == 0:
        raise ValueError("there are no events to evaluate on")
    first = int(flat.timestamps.min())
    if window.start_ms < first:
        raise ValueError(
            f"the window starts at {window.start_ms}, before the first event ({first}): "
            "no model can have been trained on events before it"
        )
    row_of_event = flat.row_of_event()
    inside = (flat.timestamps > window.start_ms) & (flat.timestamps <= window.end_ms)
    ends = np.flatnonzero(IS_POSITIVE[flat.action_ids] & inside)
    rows = row_of_event[ends]
    has_history = ends > flat.offsets[rows]
    without_history = int((~has_history).sum())
    rows, ends = rows[has_history], ends[has_history]
    starts = np.maximum(flat.offsets[rows], ends - max_len)
    items, action_ids, timestamps = gather([flat.items, flat.action_ids, flat.timestamps], starts, ends, max_len)
    truncated = 0
    if stored_max_len is not None:
        stored = np.diff(flat.offsets)
        first_stored = flat.timestamps[np.minimum(flat.offsets[:-1], max(len(flat.timestamps) - 1, 0))]
        truncated = int(((stored >= stored_max_len) & (first_stored > window.start_ms)).sum())
    examples = SequenceExamples(
        user_ids=user_ids[rows],
        item_indices=items,
        action_ids=action_ids,
        timestamps=timestamps,
        lengths=(ends - starts).astype(np.int64),
        targets=flat.items[ends].astype(np.int64),
        num_items=num_items,
    )
    return WindowRows(examples, flat.timestamps[ends], without_history, truncated)


class _AtEventTime:
    """A scorer that scores like ``scorer`` but gives -inf to the items that do not exist yet
    at each row's event (first seen after it), so they are never candidates."""

    def __init__(self, scorer: LinearScorer, first_seen: torch.Tensor, event_ts: torch.Tensor) -> None:
        self.scorer = scorer
        self.num_items = scorer.num_items
        self.first_seen = first_seen
        self.event_ts = event_ts

    def queries(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.scorer.queries(batch)

    def score_chunks(
        self, queries: torch.Tensor, chunk_items: int = DEFAULT_CHUNK_ITEMS
    ) -> Iterator[tuple[int, torch.Tensor]]:
        for start, scores in self.scorer.score_chunks(queries, chunk_items):
            born = self.first_seen[start : start + scores.shape[1]].to(scores.device)
            later = born.unsqueeze(0) > self.event_ts.to(scores.device).unsqueeze(1)
            yield start, scores.masked_fill(later, float("-inf"))


def window_ranks(
    scorer: LinearScorer,
    rows: WindowRows,
    first_seen: np.ndarray,
    *,
    batch_size: int = 256,
    chunk_items: int = DEFAULT_CHUNK_ITEMS,
) -> SplitRanks:
    """Target ranks of every row (both protocols), among the items existing at its event.

    ``first_seen[i]`` is item index i's first-seen ts (``NEVER`` when unknown); items of the
    scorer beyond it never exist."""
    known = np.full(scorer.num_items + 1, NEVER, dtype=np.int64)
    shared = min(len(first_seen), len(known))
    known[:shared] = first_seen[:shared]
    born = torch.from_numpy(known)
    parts = []
    for start in range(0, len(rows.examples), batch_size):
        chunk = np.arange(start, min(start + batch_size, len(rows.examples)))
        at_time = _AtEventTime(scorer, born, torch.from_numpy(rows.event_ts[chunk]))
        # Every row has a target and a history, so split_ranks keeps them all, in order.
        parts.append(split_ranks(at_time, rows.examples.take(chunk), batch_size=len(chunk), chunk_items=chunk_items))
    if not parts:
        return SplitRanks(np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool))
    return SplitRanks.concatenate(parts)


@dataclass(frozen=True)
class WindowEvaluation:
    """The metrics of one window (empty when it held no positive event with a history)."""

    window: TimeWindow
    targets: int
    metrics: dict[str, float]
    without_history: int = 0
    truncated_users: int = 0

    @property
    def empty(self) -> bool:
        return self.targets == 0

    def describe(self) -> str:
        if self.empty:
            return f"no positive event with a history in the window {self.window.describe()}"
        return f"{self.targets} target events in the window {self.window.describe()}"


def evaluate_window(
    scorer: LinearScorer,
    rows: WindowRows,
    first_seen: np.ndarray,
    window: TimeWindow,
    *,
    ks: tuple[int, ...] = WINDOW_KS,
    batch_size: int = 256,
    chunk_items: int = DEFAULT_CHUNK_ITEMS,
    new_after_ms: int | None = None,
) -> WindowEvaluation:
    """The window's metrics (keys ``window_*``; see ``window_metrics``) of ``scorer``; "new"
    targets are those launched (first seen) after ``new_after_ms``, by default the window's start."""
    if len(rows.examples) == 0:
        return WindowEvaluation(window, 0, {}, rows.without_history, rows.truncated_users)
    targets = rows.examples.targets
    known = targets <= scorer.num_items
    if not known.any():
        raise NoOverlapError(
            f"the model knows {scorer.num_items} items, none of the {len(targets)} target items of the window "
            f"{window.describe()}: there is nothing it could be scored on"
        )
    ranks = window_ranks(scorer, rows, first_seen, batch_size=batch_size, chunk_items=chunk_items)
    new_after = window.start_ms if new_after_ms is None else new_after_ms
    launched_after = first_seen[np.minimum(targets, len(first_seen) - 1)] > new_after
    metrics = window_metrics(ranks, known, launched_after, ks)
    return WindowEvaluation(window, len(targets), metrics, rows.without_history, rows.truncated_users)


def window_metrics(
    ranks: SplitRanks, known: np.ndarray, launched_after: np.ndarray, ks: tuple[int, ...] = WINDOW_KS
) -> dict[str, float]:
    """MLflow metrics of a window: ``split_metrics``' keys under ``window_``, plus ``window_targets``,
    ``window_unknown_target_share``, ``window_new_target_share`` (targets launched after the
    window's start, or the time ``evaluate_window`` is given) and, when there are such targets,
    ``window_new_ndcg_K`` / ``window_new_all_ndcg_K``."""
    metrics = split_metrics(ranks, ks, PREFIX)
    metrics[f"{PREFIX}_targets"] = float(len(known))
    metrics[f"{PREFIX}_unknown_target_share"] = float((~known).mean())
    metrics[f"{PREFIX}_new_target_share"] = float(launched_after.mean())
    if launched_after.any():
        for protocol, values in (("", ranks.seen_filtered), ("all_", ranks.all_items)):
            new = ranking_metrics(values[launched_after], ks)
            metrics.update({f"{PREFIX}_new_{protocol}ndcg_{k}": new[f"ndcg_{k}"] for k in ks})
    return metrics

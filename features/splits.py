"""Evaluation splits of user sequences, vectorised with numpy.

Sequences arrive flattened: ``offsets`` (N + 1) delimit row r's events
``[offsets[r], offsets[r + 1])`` in the flat ``items``/``action_ids``/``timestamps``.
Each split picks, per kept row, a flat ``end`` (exclusive) and a target; the history is the
last ``max_len`` events before ``end``.

Leave-last-out (targets are POSITIVE_ACTIONS events): test target = the user's last
positive event, validation target = the second-to-last; the train sequence = every event
before the validation target. Users with fewer than 3 positive events are train-only and
train on their whole sequence.

Time split at ``split_ts``: train sequence = the events with ts < split_ts; test target =
the first positive event at or after split_ts, history = every event before it. Test rows
with an empty history are dropped. There is no validation split in time mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingestion.schema import ACTION_IDS, POSITIVE_ACTIONS

SPLITS = ("train", "validation", "test")
SPLIT_MODES = ("leave_last_out", "time")
IS_POSITIVE = np.zeros(len(ACTION_IDS) + 1, dtype=bool)
"""Lookup table: IS_POSITIVE[action_id] is True for POSITIVE_ACTIONS."""
IS_POSITIVE[[ACTION_IDS[action] for action in POSITIVE_ACTIONS]] = True
MIN_POSITIVES = 3


@dataclass(frozen=True)
class FlatSequences:
    """Sequences of N users, flattened (see the module docstring)."""

    offsets: np.ndarray  # (N + 1,) int64
    items: np.ndarray  # (E,) int64
    action_ids: np.ndarray  # (E,) int64
    timestamps: np.ndarray  # (E,) int64

    @property
    def rows(self) -> int:
        return len(self.offsets) - 1

    def row_of_event(self) -> np.ndarray:
        """(E,) the row each flat event belongs to."""
        return np.repeat(np.arange(self.rows), np.diff(self.offsets))


@dataclass(frozen=True)
class SplitRows:
    """The selected rows of a split: history is flat ``[starts, ends)``, then ``targets``."""

    rows: np.ndarray  # (M,) row indices into the FlatSequences
    starts: np.ndarray  # (M,) flat index of the first history event
    ends: np.ndarray  # (M,) flat index after the last history event
    targets: np.ndarray  # (M,) item index to predict, 0 = none (train)


def select(flat: FlatSequences, split: str, max_len: int, split_mode: str, split_ts: int | None) -> SplitRows:
    """The rows, history bounds and targets of ``split`` under ``split_mode``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if split_mode == "leave_last_out":
        rows, ends, targets = _leave_last_out(flat, split)
    elif split_mode == "time":
        if split_ts is None:
            raise ValueError("the time split needs split_ts (epoch ms)")
        if split == "validation":
            raise ValueError("the time split has train and test only; use leave_last_out for validation")
        rows, ends, targets = _time_split(flat, split, split_ts)
    else:
        raise ValueError(f"unknown split_mode {split_mode!r}; choose one of {SPLIT_MODES}")
    starts = np.maximum(flat.offsets[rows], ends - max_len)
    return SplitRows(rows=rows, starts=starts, ends=ends, targets=targets)


def _leave_last_out(flat: FlatSequences, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    positive = IS_POSITIVE[flat.action_ids]
    positive_at = np.flatnonzero(positive)  # ascending, so grouped by row in row order
    counts = np.bincount(flat.row_of_event()[positive_at], minlength=flat.rows)
    last = np.cumsum(counts) - 1  # index into positive_at of each row's last positive
    eligible = counts >= MIN_POSITIVES
    rows = np.flatnonzero(eligible)
    if split == "test":
        ends = positive_at[last[rows]]
    elif split == "validation":
        ends = positive_at[last[rows] - 1]
    else:
        rows = np.arange(flat.rows)
        ends = flat.offsets[1:].copy()
        ends[eligible] = positive_at[last[eligible] - 1]
        return rows, ends, np.zeros(len(rows), dtype=np.int64)
    return rows, ends, flat.items[ends]


def _time_split(flat: FlatSequences, split: str, split_ts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row_of_event = flat.row_of_event()
    if split == "train":
        # Sequences are in time order, so the events before split_ts are a prefix.
        before = np.bincount(row_of_event[flat.timestamps < split_ts], minlength=flat.rows)
        rows = np.flatnonzero(before > 0)
        return rows, flat.offsets[rows] + before[rows], np.zeros(len(rows), dtype=np.int64)
    candidates = np.flatnonzero(IS_POSITIVE[flat.action_ids] & (flat.timestamps >= split_ts))
    rows, first = np.unique(row_of_event[candidates], return_index=True)
    ends = candidates[first]
    has_history = ends > flat.offsets[rows]
    rows, ends = rows[has_history], ends[has_history]
    return rows, ends, flat.items[ends]


def gather(columns: list[np.ndarray], starts: np.ndarray, ends: np.ndarray, max_len: int) -> list[np.ndarray]:
    """Per column, (M, max_len) of ``column[starts[i]:ends[i]]`` in row i, right-padded with 0."""
    rows = len(starts)
    lengths = ends - starts
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    source = within + np.repeat(starts, lengths)
    target = within + np.repeat(np.arange(rows) * max_len, lengths)
    padded = []
    for values in columns:
        out = np.zeros(rows * max_len, dtype=values.dtype)
        out[target] = values[source]
        padded.append(out.reshape(rows, max_len))
    return padded

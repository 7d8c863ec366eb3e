"""A SASRec-format file (``user item`` per line, time order per user) as RecBole atomic files
with streamrec's leave-last-out split.

The split is ``features.splits.select`` itself, so the reference sees the very validation and
test rows streamrec evaluates: test target = a user's last event, validation target = the
second to last, history = the last ``max_len`` events before the target; users with fewer
than ``MIN_POSITIVES`` (3) events are train-only. Every event of the file is a click (a
positive), as ``ingestion.replay`` replays this format.

Training rows are single (history, target) pairs, as RecBole's SASRec trains. Which targets
is ``train_window``:

* ``max_len`` (default): the targets streamrec trains on. Its train row is the last
  ``max_len`` events of a user's train sequence, every position after the first a target
  seen with the events before it in that window (as the SASRec paper trains); here each of
  those positions becomes a row, so both implementations learn from the same targets with
  the same histories.
* ``full``: RecBole's own data augmentation over the whole train sequence: every event after
  the first is a target, its history the last ``max_len`` events before it (2.2 times the rows
  on wikipedia.txt; streamrec drops the older events).

The files go to RecBole as ``benchmark_filename``
(``<name>.train.inter``, ``.valid.inter``, ``.test.inter``), so RecBole applies no split or
augmentation of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from features.splits import FlatSequences, select
from ingestion.schema import ACTION_IDS

HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
FILES = {"train": "train", "validation": "valid", "test": "test"}
TrainWindow = Literal["max_len", "full"]
TRAIN_WINDOWS = ("max_len", "full")


@dataclass(frozen=True)
class Sequences:
    """The users of a file in order of first appearance and their events, flattened."""

    users: list[str]
    flat: FlatSequences


@dataclass(frozen=True)
class Rows:
    """One split's rows: a user, the history before the target (oldest first) and the target."""

    users: list[str]
    histories: list[np.ndarray]
    targets: np.ndarray


def read_sequences(path: Path) -> Sequences:
    """The file's sequences; a user's events keep file order (their time order)."""
    users: dict[str, list[int]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            user, item = line.split()
            users.setdefault(user, []).append(int(item))
    lengths = np.array([len(items) for items in users.values()], dtype=np.int64)
    items = np.concatenate([np.array(items, dtype=np.int64) for items in users.values()]) if users else np.zeros(0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    within = np.arange(len(items)) - np.repeat(offsets[:-1], lengths)  # the k-th event of its user: its time
    flat = FlatSequences(
        offsets=offsets,
        items=items.astype(np.int64),
        action_ids=np.full(len(items), ACTION_IDS["click"], dtype=np.int64),
        timestamps=within.astype(np.int64),
    )
    return Sequences(users=list(users), flat=flat)


def split_rows(sequences: Sequences, max_len: int, train_window: TrainWindow = "max_len") -> dict[str, Rows]:
    """Train (one row per target, see the module docstring), validation and test rows of
    streamrec's leave-last-out split."""
    flat = sequences.flat
    out: dict[str, Rows] = {}
    for split in ("validation", "test"):
        chosen = select(flat, split, max_len, "leave_last_out", None)
        out[split] = Rows(
            users=[sequences.users[row] for row in chosen.rows],
            histories=[flat.items[start:end] for start, end in zip(chosen.starts, chosen.ends, strict=True)],
            targets=chosen.targets,
        )
    train = select(flat, "train", max_len, "leave_last_out", None)
    users, histories, targets = [], [], []
    for row, start, end in zip(train.rows, train.starts, train.ends, strict=True):
        first = int(start if train_window == "max_len" else flat.offsets[row])
        for position in range(first + 1, int(end)):
            users.append(sequences.users[row])
            histories.append(flat.items[max(first, position - max_len) : position])
            targets.append(flat.items[position])
    out["train"] = Rows(users=users, histories=histories, targets=np.array(targets, dtype=np.int64))
    return out


def write_atomic(rows: dict[str, Rows], directory: Path, name: str) -> dict[str, int]:
    """``<directory>/<name>/<name>.{train,valid,test}.inter``; the number of rows of each."""
    folder = directory / name
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, suffix in FILES.items():
        part = rows[split]
        lines = [
            f"{user}\t{' '.join(map(str, history.tolist()))}\t{target}\n"
            for user, history, target in zip(part.users, part.histories, part.targets.tolist(), strict=True)
        ]
        (folder / f"{name}.{suffix}.inter").write_text(HEADER + "".join(lines))
        counts[split] = len(lines)
    return counts

"""Real interaction datasets as contract events in time order (for `streamrec produce replay`).

Formats:

* ``sasrec``: lines ``user item``, already in time order per user (the SASRec/HSTU
  preprocessed files). They carry no time, so a user's k-th line gets
  ``ts = start + k * step`` (default one minute apart, ending before now); action ``click``.
* ``movielens``: ``ratings.dat`` (``user::item::rating::ts``) or ``ratings.csv`` (header
  ``userId,movieId,rating,timestamp``), ts in seconds. Rating -> action: >= 4 ``like``,
  <= 2 ``dislike``, otherwise ``view``.
* ``csv``: ``user,item,ts[,action]`` with an optional header line; ts in milliseconds (or
  seconds with ``ts_unit="s"``); action defaults to ``click``. Values are sent as they are,
  so rows with a bad action or ts end up in quarantine with a reason.

Events are ordered by ts (ties keep file order). ``event_id`` is ``<prefix>-<row>`` with the
row number in the file, so replaying the same file again adds nothing to silver.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pandas as pd

ReplayFormat = Literal["sasrec", "movielens", "csv"]
FORMATS: tuple[str, ...] = ("sasrec", "movielens", "csv")
DAY_MS = 86_400_000


def rating_action(rating: float) -> str:
    """The action a star rating stands for: >= 4 like, <= 2 dislike, else view."""
    if rating >= 4:
        return "like"
    if rating <= 2:
        return "dislike"
    return "view"


def read_replay(
    path: Path,
    fmt: ReplayFormat,
    *,
    ts_unit: Literal["ms", "s"] = "ms",
    step_ms: int = 60_000,
    start_ms: int | None = None,
    id_prefix: str | None = None,
) -> pd.DataFrame:
    """Events of the dataset at ``path`` (columns event_id, user_id, item_id, action, ts) in time order."""
    if fmt == "sasrec":
        frame = _sasrec(path, step_ms, start_ms)
    elif fmt == "movielens":
        frame = _movielens(path)
    elif fmt == "csv":
        frame = _csv(path, ts_unit)
    else:
        raise ValueError(f"unknown replay format {fmt!r}; known: {', '.join(FORMATS)}")
    prefix = id_prefix or f"{fmt}-{path.stem}"
    frame["event_id"] = prefix + "-" + frame.index.astype(str)
    order = pd.to_numeric(frame["ts"], errors="coerce")  # non-integer ts (csv) sort last
    frame = frame.assign(_order=order).sort_values("_order", kind="stable", na_position="last")
    return frame[["event_id", "user_id", "item_id", "action", "ts"]]


def replay_events(frame: pd.DataFrame) -> Iterator[dict[str, Any]]:
    """The rows of ``read_replay`` as event dicts."""
    for event_id, user_id, item_id, action, ts in frame.itertuples(index=False, name=None):
        yield {"event_id": event_id, "user_id": user_id, "item_id": item_id, "action": action, "ts": ts}


def _sasrec(path: Path, step_ms: int, start_ms: int | None) -> pd.DataFrame:
    frame = pd.read_csv(path, sep=r"\s+", header=None, names=["user_id", "item_id"], dtype=str, engine="c")
    position = frame.groupby("user_id", sort=False).cumcount().astype("int64")
    if start_ms is None:
        longest = int(position.max()) + 1 if len(frame) else 0
        start_ms = int(time.time() * 1000) - longest * step_ms - DAY_MS
    frame["ts"] = start_ms + position * step_ms
    frame["action"] = "click"
    return frame


def _movielens(path: Path) -> pd.DataFrame:
    raw = path.read_bytes()
    if b"::" in raw[:1_000]:
        frame = pd.read_csv(io.BytesIO(raw.replace(b"::", b"\t")), sep="\t", header=None,
                            names=["user_id", "item_id", "rating", "ts"],
                            dtype={"user_id": str, "item_id": str})  # fmt: skip
    else:
        frame = pd.read_csv(io.BytesIO(raw), dtype={"userId": str, "movieId": str})
        frame = frame.rename(columns={"userId": "user_id", "movieId": "item_id", "timestamp": "ts"})
    frame["ts"] = frame["ts"].astype("int64") * 1000
    frame["action"] = frame["rating"].map(rating_action)
    return frame


def _csv(path: Path, ts_unit: Literal["ms", "s"]) -> pd.DataFrame:
    with path.open() as handle:
        first = handle.readline().split(",")
    has_header = len(first) >= 3 and not first[2].strip().lstrip("-").isdigit()
    frame = pd.read_csv(path, header=0 if has_header else None, dtype=str, keep_default_na=False)
    if frame.shape[1] not in (3, 4):
        raise ValueError(f"{path}: expected columns user,item,ts[,action], found {frame.shape[1]}")
    frame.columns = ["user_id", "item_id", "ts", "action"][: frame.shape[1]]
    if "action" not in frame:
        frame["action"] = "click"
    # A ts that is not an integer is sent as the text it is; validation quarantines it.
    numeric = pd.to_numeric(frame["ts"], errors="coerce")
    integral = numeric.notna() & (numeric == numeric.round())
    scaled = numeric.where(integral, 0).astype("int64") * (1000 if ts_unit == "s" else 1)
    frame["ts"] = scaled.astype(object).where(integral, frame["ts"])
    return frame

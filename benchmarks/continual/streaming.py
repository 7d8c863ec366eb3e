"""The continual benchmark's streaming policy: the model `streamrec train --follow` serves.

A follow job (``training.streaming.follow.FollowJob``) starts from the initial model and learns
each day's new silver/events rows through its own learning step (``FollowJob.consume``: the new
items indexed, the touched users' histories extended, at most ``max_steps`` steps on them and a
replay sample), publishing nothing. The day is fed in ``chunks`` slices of equal time by event
ts (24: an hour each); slice k's events are scored with the model as it was after slices < k,
so each event is predicted by a model that has learned everything up to the start of its hour
and nothing after. The real job publishes every 30 s and learns each silver version as Spark
commits it, so an hour is a coarser clock than the deployed one (it learns later, and in fewer,
larger rounds).

Scoring is the other policies' time-ordered evaluation (``training.retrieval.prequential``:
``window_rows`` of the day, ``window_ranks`` among the items existing at each event, one
``window_metrics`` over the day), with each row ranked by its slice's model
(``chunked_window_metrics``); a slice's model knows the items its job had indexed by then.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from deltalake import DeltaTable

from features.reader import latest_versions, read_sequences
from features.silver import silver_changes
from infra.settings import Settings
from training.retrieval.evaluation import SplitRanks
from training.retrieval.prequential import (
    NoOverlapError,
    TimeWindow,
    WindowRows,
    window_metrics,
    window_ranks,
    window_rows,
)
from training.retrieval.retriever import Retriever
from training.retrieval.version_eval import item_first_seen
from training.streaming.follow import SILVER_COLUMNS, FollowJob, FollowOptions, follow_config, load_base
from training.streaming.model import FollowModel

DEFAULT_CHUNKS = 24  # an hour of a day


@dataclass(frozen=True)
class Variant:
    """One streaming policy: its name, TrainConfig and FollowOptions fields over the defaults
    (those of `streamrec train --follow` without options; the seed is the stream's)."""

    name: str = "streaming"
    train: dict[str, Any] = field(default_factory=dict)
    follow: dict[str, Any] = field(default_factory=dict)


def parse_variants(text: str) -> list[Variant]:
    """``--streaming``: a JSON object of policy name -> {"train": {...}, "follow": {...}}."""
    given = json.loads(text)
    if not isinstance(given, dict) or not given:
        raise ValueError(f"--streaming must be a JSON object of policy names, not {text!r}")
    found = []
    for name, fields in given.items():
        unknown = set(fields) - {"train", "follow"}
        if unknown:
            raise ValueError(f"--streaming {name}: unknown keys {sorted(unknown)} (train, follow)")
        found.append(Variant(name, dict(fields.get("train", {})), dict(fields.get("follow", {}))))
    return found


def chunk_bounds(start_ms: int, length_ms: int, chunks: int) -> np.ndarray:
    """(chunks + 1,) the slice edges of ``(start_ms, start_ms + length_ms]``: slice k is ``(edge k, edge k+1]``."""
    return start_ms + (np.arange(chunks + 1, dtype=np.int64) * length_ms) // chunks


def chunk_of(ts: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The slice of each ts (``chunk_bounds``); ts before the first slice fall in it, after the last in it."""
    return np.clip(np.searchsorted(bounds, ts, side="left") - 1, 0, len(bounds) - 2)


def split_by_time(rows: pa.Table, bounds: np.ndarray) -> list[pa.Table]:
    """``rows`` (a ``ts`` column) in the slices of ``bounds``, in time order."""
    slices = chunk_of(rows.column("ts").to_numpy(), bounds)
    return [rows.filter(pa.array(slices == k)) for k in range(len(bounds) - 1)]


def snapshot(model: FollowModel) -> Retriever:
    """A frozen copy of the follow model as a Retriever over the items it has rows for."""
    encoder = copy.deepcopy(model.encoder).eval()
    return Retriever(encoder, model.table.weight.detach()[: model.known_items + 1].clone())


def chunked_window_metrics(
    scorers: list[Retriever], rows: WindowRows, first_seen: np.ndarray, bounds: np.ndarray, new_after_ms: int
) -> dict[str, float]:
    """``prequential.evaluate_window``'s metrics of the window's ``rows`` with row i ranked by
    ``scorers[slice of its event]``: a target is unknown when its slice's model has no row for it.
    Raises ``NoOverlapError`` when no slice's model knows its targets."""
    if len(rows.examples) == 0:
        return {}
    slices = chunk_of(rows.event_ts, bounds)
    order = np.argsort(slices, kind="stable")
    parts, known = [], []
    for k, scorer in enumerate(scorers):
        taken = order[slices[order] == k]
        if len(taken) == 0:
            continue
        part = WindowRows(rows.examples.take(taken), rows.event_ts[taken], 0, 0)
        parts.append(window_ranks(scorer, part, first_seen))
        known.append(part.examples.targets <= scorer.num_items)
    known_all = np.concatenate(known)
    if not known_all.any():
        raise NoOverlapError("no slice's model knows any of the window's targets")
    targets = rows.examples.targets[order]
    launched_after = first_seen[np.minimum(targets, len(first_seen) - 1)] > new_after_ms
    return window_metrics(SplitRanks.concatenate(parts), known_all, launched_after)


class StreamingPolicy:
    """A follow job over the initial model, fed a day at a time in slices (``learn_day``),
    remembering the model at the start of each slice of the day it learned last."""

    def __init__(self, settings: Settings, base_version: int, seed: int, variant: Variant) -> None:
        self.settings, self.variant = settings, variant
        base = load_base(settings, base_version, log=lambda line: None)
        options = replace(FollowOptions.from_settings(settings), **variant.follow)
        config = follow_config({"seed": seed, **variant.train}, base.info)
        self.job = FollowJob(settings, base, config, options, log=lambda line: None)
        self.max_len = base.info.encoder.max_len
        self.scorers: list[Retriever] = []
        self.bounds = np.zeros(0, dtype=np.int64)
        self.day: dict[str, Any] = {}

    def start_day(self, bounds: np.ndarray) -> None:
        stats = self.job.stats
        self.bounds, self.scorers = bounds, []
        self.day = {"events": stats.events, "steps": stats.steps, "examples": stats.examples,
                    "skipped_examples": stats.skipped_examples, "known_items": self.job.model.known_items,
                    "seconds": 0.0}  # fmt: skip

    def learn_slice(self, rows: pa.Table, silver_version: int) -> None:
        """Remember the model as it is, then learn ``rows`` (``FollowJob.consume``)."""
        started = time.perf_counter()
        self.scorers.append(snapshot(self.job.model))
        self.job.consume(rows, silver_version)
        self.day["seconds"] += time.perf_counter() - started

    def day_facts(self) -> dict[str, Any]:
        """What the day's slices did: events learned, steps, examples (and those past the step budget), new rows."""
        stats, day = self.job.stats, self.day
        return {
            "events": stats.events - day["events"],
            "steps": stats.steps - day["steps"],
            "examples": stats.examples - day["examples"],
            "skipped_examples": stats.skipped_examples - day["skipped_examples"],
            "new_items": self.job.model.known_items - day["known_items"],
            "seconds": round(day["seconds"], 1),
        }

    def score_day(self, start_ms: int, length_ms: int, new_after_ms: int) -> dict[str, float]:
        """The day's window metrics (after the features were refreshed with its events), each
        slice's events ranked by the model at the start of the slice ({} when unscorable)."""
        versions = latest_versions(self.settings)
        user_ids, flat = read_sequences(self.settings, versions.user_sequences)
        first_seen = item_first_seen(self.settings, versions.item_vocab)
        window = TimeWindow(start_ms, length_ms)
        rows = window_rows(user_ids, flat, window, self.max_len, len(first_seen) - 1,
                           stored_max_len=self.settings.features.max_len)  # fmt: skip
        try:
            with torch.inference_mode():
                return chunked_window_metrics(self.scorers, rows, first_seen, self.bounds, new_after_ms)
        except NoOverlapError:
            return {}


def learn_day(policies: list[StreamingPolicy], start_ms: int, length_ms: int, chunks: int) -> dict[str, Any]:
    """Feed every policy the silver rows added since the last day, slice by slice, the policies
    in turn within a slice (each indexes a slice's new items before any learns the next slice,
    so every job's model knows the same items at each slice's start); the day's facts."""
    uri = policies[0].job.silver_uri
    cursor = policies[0].job.cursor
    if any(policy.job.cursor != cursor for policy in policies):
        raise ValueError("the streaming policies have learned different silver versions")
    latest = DeltaTable(uri).version()
    rows = silver_changes(uri, cursor, latest, SILVER_COLUMNS).new_rows
    bounds = chunk_bounds(start_ms, length_ms, chunks)
    parts = split_by_time(rows, bounds)
    for policy in policies:
        policy.start_day(bounds)
    for k, part in enumerate(parts):
        for policy in policies:
            policy.learn_slice(part, latest if k == len(parts) - 1 else policy.job.cursor)
    ts = rows.column("ts").to_numpy()
    outside = int(((ts <= start_ms) | (ts > start_ms + length_ms)).sum())  # learned in the first or last slice
    return {"chunks": chunks, "outside_the_day": outside, **{p.variant.name: p.day_facts() for p in policies}}

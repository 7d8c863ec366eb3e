"""`streamrec train --follow`: learn from new silver/events rows and publish model deltas.

The job starts from a registered retrieval version (the serving alias's, or ``--base-version``)
and loops: find the silver/events versions added since the last one it consumed, give the new
items vocabulary indices (``features.build.append_new_items``, the builds' own rule) and rows
from the table's headroom, append the new events to the histories of the users they touch
(features/user_sequences at the base's version plus the events since: ``histories``), train at
most ``train.follow_max_steps`` steps on those users' sequences mixed with a replay sample of
other users', and every ``publish_every_s`` publish a ``ModelDelta``: the rows changed since the
last delta, the encoder's weights when they changed, the items that took headroom rows, the
silver version it reflects and the Kafka positions of its rows.

Exactly once, recoverable: the published deltas are the job's only durable state. Each delta
records the silver version it learned up to; a (re)started job rebuilds the model as the base
plus every published delta of that base, the histories as the base's plus the silver rows up to
the last delta's version, and continues after it. What a killed job learned after its last
delta is lost with it and learned again from the same rows, once in the lineage. Optimizer
state is not published and starts afresh on a restart.

One process, no Ray Train: see docs/training.md ("The follow loop") for why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from deltalake import DeltaTable

from features import arrow_jobs
from features.build import ConcurrentBuildError, append_new_items
from features.examples import SequenceExamples
from features.silver import EVENT_COLUMNS, silver_changes
from features.tables import ITEM_VOCAB_SCHEMA, ITEM_VOCAB_TABLE, USER_SEQUENCES_TABLE, build_record, recorded_state
from infra.settings import Settings
from ingestion.schema import SILVER_TABLE
from training.retrieval.config import TrainConfig
from training.retrieval.io import ModelInfo
from training.streaming.deltas import MODEL_DELTAS_TABLE, DeltaPosition, ModelDelta, ModelDeltaTable
from training.streaming.histories import Histories, examples_of
from training.streaming.model import FollowModel

Log = Callable[[str], None]
SILVER_COLUMNS = [*EVENT_COLUMNS, "ingested_at"]
VOCAB_ATTEMPTS = 5  # appends refused because a feature build committed the vocabulary first
# The follow job trains the item table at its full learning rate unless the config names a
# `warm_start_lr_scale`: a warm start's 0.1 (its first Adagrad steps over every row would undo the
# trained rows) left new items' rows near their random start in the few steps a day gives them.
# On the drifting replay the full rate served more NDCG@10 on every day, 3 seeds
# (benchmarks/results/continual.json, `streaming_lr1` vs `streaming`; docs/training.md).
FOLLOW_TABLE_LR_SCALE = 1.0


@dataclass(frozen=True)
class FollowOptions:
    """How the follow loop runs (``train.follow_*`` settings and ``--publish-every``)."""

    publish_every_s: float = 30.0
    poll_s: float = 1.0
    max_steps: int = 50
    replay_ratio: float = 1.0
    headroom: int = 10_000

    def __post_init__(self) -> None:
        if self.publish_every_s <= 0 or self.poll_s <= 0:
            raise ValueError("publish_every_s and poll_s must be positive")
        if self.max_steps < 1 or self.replay_ratio < 0 or self.headroom < 0:
            raise ValueError("max_steps >= 1, replay_ratio >= 0 and headroom >= 0")

    @classmethod
    def from_settings(cls, settings: Settings, publish_every_s: float = 30.0) -> FollowOptions:
        train = settings.train
        return cls(publish_every_s, train.follow_poll_s, train.follow_max_steps, train.follow_replay_ratio,
                   train.follow_item_headroom)  # fmt: skip


@dataclass(frozen=True)
class FollowBase:
    """The registered version the deltas apply to: its number, model.json and weights."""

    version: int
    info: ModelInfo
    weights: dict[str, torch.Tensor]


def load_base(settings: Settings, version: int | None, log: Log) -> FollowBase:
    """The registered retrieval version ``version``, by default the one the serving alias names."""
    from training.common import tracking
    from training.retrieval.io import read_info, read_weights

    name = settings.mlflow.registered_model
    if version is None:
        from mlflow.exceptions import MlflowException

        try:
            found = tracking.client(settings).get_model_version_by_alias(name, settings.serve.model_alias)
        except MlflowException as error:
            raise LookupError(
                f"{name} has no {settings.serve.model_alias!r} version to follow: promote one, or give --base-version"
            ) from error
        version = int(found.version)
    with tracking.downloaded_version(settings, str(version)) as directory:
        info, weights = read_info(directory), read_weights(directory)
    log(f"base: {name} version {version} ({info.encoder.kind}, {info.num_items:,} items)")
    return FollowBase(version, info, weights)


@dataclass
class FollowStats:
    """What the job did since it started (the progress lines' numbers)."""

    events: int = 0  # silver rows consumed
    examples: int = 0  # sequences trained on (new and replayed)
    skipped_examples: int = 0  # beyond a round's step budget
    steps: int = 0
    deltas: int = 0
    new_items: int = 0  # items that took a headroom row
    rounds: list[tuple[int, int, int]] = field(default_factory=list)  # (since, until, rows) per round


class FollowJob:
    """The follow loop over one base version: ``round`` consumes new silver versions,
    ``publish`` writes a delta, ``run`` alternates them until stopped."""

    def __init__(
        self,
        settings: Settings,
        base: FollowBase,
        config: TrainConfig,
        options: FollowOptions,
        log: Log = print,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.encoder != base.info.encoder:
            raise ValueError(f"the follow job trains the base's encoder {base.info.encoder}, not {config.encoder}")
        self.settings, self.base, self.config, self.options, self.log, self.clock = (
            settings, base, config, options, log, clock,
        )  # fmt: skip
        self.silver_uri = settings.table_uri(SILVER_TABLE)
        self.deltas = ModelDeltaTable(settings.table_uri(MODEL_DELTAS_TABLE))
        self.model = FollowModel(base.info.encoder, base.weights, base.info.num_items + options.headroom, config)
        self.stats = FollowStats()
        self.rng = np.random.default_rng(config.seed)
        sequences_version = base.info.feature_versions[USER_SEQUENCES_TABLE]
        state = recorded_state(settings.table_uri(USER_SEQUENCES_TABLE), sequences_version)
        if state is None:
            raise ValueError(f"{USER_SEQUENCES_TABLE} version {sequences_version} records no silver version")
        self.base_silver = state[0]
        self.histories = Histories.read(settings, sequences_version)
        self.vocab = self._read_vocab()
        self.cursor, self.offsets = self.base_silver, self._base_offsets()
        self.position = DeltaPosition(settings.mlflow.registered_model, base.version)
        self.announced = base.info.num_items  # the largest index whose item id a delta (or the base) carries
        self._resume()
        self._grow()
        self.pending = bool(self.model.changed.any())
        self.waiting_since_us: int | None = None  # ingestion time of the oldest row not published

    # Start and resume ---------------------------------------------------------------------------
    def _resume(self) -> None:
        """Apply the base's published deltas; replay the silver rows they reflect into the histories."""
        for delta in self.deltas.after(self.position, width=self.model.dim):
            self.model.apply(delta)
            self.position, self.cursor, self.offsets = delta.position, delta.silver_version, dict(delta.kafka_offsets)
            self.announced = max([self.announced, *delta.new_items.values()])
        self.model.mark_published()
        if self.position.sequence == 0:
            self.log(f"starting at silver/events version {self.cursor} (the base's features)")
            return
        if self.cursor > self.base_silver:
            rows = silver_changes(self.silver_uri, self.base_silver, self.cursor).new_rows
            self._index_new_items(rows, self.cursor)
            self.histories.add(arrow_jobs.with_item_index(rows, self.vocab))
        self.log(f"resumed after delta {self.position} at silver/events version {self.cursor}")

    def _base_offsets(self) -> dict[int, int]:
        """Per Kafka partition the next offset after the silver rows the base reflects."""
        rows = DeltaTable(self.silver_uri, version=self.base_silver).to_pyarrow_dataset()
        table = rows.to_table(columns=["kafka_partition", "kafka_offset"])
        return _next_offsets(table, {})

    def _read_vocab(self) -> pa.Table:
        return DeltaTable(self.settings.table_uri(ITEM_VOCAB_TABLE)).to_pyarrow_table().cast(ITEM_VOCAB_SCHEMA)

    # The loop -----------------------------------------------------------------------------------
    def round(self) -> int:
        """Consume the silver versions after the cursor, if any: index, learn, advance. Returns
        the rows consumed."""
        latest = DeltaTable(self.silver_uri).version()
        if latest <= self.cursor:
            return 0
        changes = silver_changes(self.silver_uri, self.cursor, latest, SILVER_COLUMNS)
        if changes.lost_rows:
            self.log(f"warning: {changes.lost_rows} silver rows removed between versions {self.cursor} and {latest}")
        return self.consume(changes.new_rows, latest)

    def consume(self, rows: pa.Table, silver_version: int) -> int:
        """Learn ``rows`` (``SILVER_COLUMNS``), the silver rows after the cursor up to
        ``silver_version``, and move the cursor there; returns how many. ``round`` passes a
        version's rows at once; a caller may pass them in parts (benchmarks.continual feeds a day
        an hour at a time), each part but the last with ``silver_version`` the cursor, so the
        vocabulary never records a silver version whose items it does not hold yet."""
        if len(rows):
            self._index_new_items(rows, silver_version)
            touched = self.histories.add(arrow_jobs.with_item_index(rows, self.vocab))
            self._learn(touched)
            self.offsets = _next_offsets(rows, self.offsets)
            oldest = pc.min(rows.column("ingested_at").cast(pa.int64())).as_py()
            if self.waiting_since_us is None or oldest < self.waiting_since_us:
                self.waiting_since_us = oldest
        self.stats.rounds.append((self.cursor, silver_version, len(rows)))
        self.stats.events += len(rows)
        self.cursor = silver_version
        self.pending = True
        return len(rows)

    def publish(self) -> ModelDelta | None:
        """Publish what changed since the last delta (nothing when nothing did)."""
        if not self.pending:
            return None
        indices, vectors = self.model.changed_rows()
        ids = self._ids_by_index()
        new_items = {str(ids[index]): index for index in range(self.announced + 1, self.model.known_items + 1)}
        delta = ModelDelta.build(
            self.position, item_indices=indices, item_vectors=vectors, silver_version=self.cursor,
            kafka_offsets=self.offsets, dense_weights=self.model.dense_weights(), new_items=new_items,
        )  # fmt: skip
        self.deltas.publish(delta)
        latest = DeltaTable(self.silver_uri).version()
        waited = ""
        if self.waiting_since_us is not None:
            waited = f", oldest event waited {_waited_s(delta, self.waiting_since_us):.1f} s"
        self.log(
            f"delta {delta.position}: {self.stats.events:,} events learned, {self.stats.steps:,} steps, "
            f"{len(indices):,} rows, {len(new_items)} new items, encoder {'yes' if delta.dense_weights else 'no'}, "
            f"silver v{self.cursor} (lag {latest - self.cursor} versions{waited})"
        )
        self.model.mark_published()
        self.position, self.announced = delta.position, self.model.known_items
        self.pending, self.waiting_since_us = False, None
        self.stats.deltas += 1
        self.stats.new_items += len(new_items)
        return delta

    def run(self, stop: threading.Event) -> FollowStats:
        """Rounds until ``stop`` is set, a delta every ``publish_every_s``; then a last delta with
        what was learned since the one before."""
        last_publish = self.clock()
        while not stop.is_set():
            consumed = self.round()
            if self.clock() - last_publish >= self.options.publish_every_s:
                self.publish()
                last_publish = self.clock()
            if not consumed:
                stop.wait(self.options.poll_s)
        self.publish()
        return self.stats

    # Internals ----------------------------------------------------------------------------------
    def _index_new_items(self, rows: pa.Table, silver_version: int) -> None:
        """Append the items of ``rows`` the vocabulary lacks (recording ``silver_version``: every
        item of silver up to it is then in the vocabulary) and give them rows where they fit."""
        missing = pc.invert(pc.is_in(rows.column("item_id"), value_set=self.vocab.column("item_id")))
        if not pc.any(missing).as_py():
            return
        uri = self.settings.table_uri(ITEM_VOCAB_TABLE)
        for attempt in range(1, VOCAB_ATTEMPTS + 1):
            recorded = recorded_state(uri)
            covered, max_len = recorded if recorded is not None else (0, self.settings.features.max_len)
            try:
                appended = append_new_items(
                    self.settings, rows.filter(missing), build_record(max(silver_version, covered), max_len),
                    log=lambda message: None,
                )  # fmt: skip
                break
            except ConcurrentBuildError:
                if attempt == VOCAB_ATTEMPTS:
                    raise
                self.log("the vocabulary changed while the follow job appended to it: reading it again")
        self.vocab = appended.vocab.cast(ITEM_VOCAB_SCHEMA)
        if len(appended.added):
            first, last = pc.min_max(appended.added.column("item_index")).values()
            self.log(f"vocabulary: {len(appended.added)} new items, indices {first}..{last}")
        self._grow()

    def _grow(self) -> None:
        vocabulary_items = int(pc.max(self.vocab.column("item_index")).as_py() or 0)
        before = self.model.known_items
        self.model.grow(vocabulary_items)
        without = vocabulary_items - self.model.capacity
        if without > 0 and before < vocabulary_items:
            self.log(
                f"item headroom used up: {without} items have no row (the table holds {self.model.capacity:,} = the "
                f"base's {self.base.info.num_items:,} + train.follow_item_headroom {self.options.headroom:,}); the "
                f"follow job keeps learning the items with rows, the next full version (`streamrec train`) resizes"
            )
        if self.model.known_items > before:
            self.pending = True

    def _ids_by_index(self) -> np.ndarray:
        indices = self.vocab.column("item_index").to_numpy()
        ids = np.empty(int(indices.max()) + 1 if len(indices) else 1, dtype=object)
        ids[indices] = self.vocab.column("item_id").to_numpy(zero_copy_only=False)
        return ids

    def _learn(self, touched: pa.Table) -> None:
        """At most ``max_steps`` steps on the touched users' sequences and a replay sample."""
        replay = self.histories.sample(round(len(touched) * self.options.replay_ratio), self.rng, exclude=touched)
        max_len, known = self.config.encoder.max_len, self.model.known_items
        examples = _concatenate([examples_of(touched, max_len, known), examples_of(replay, max_len, known)])
        budget = self.options.max_steps * self.config.batch_size
        if len(examples) > budget:
            self.stats.skipped_examples += len(examples) - budget
            examples = examples.take(np.sort(self.rng.choice(len(examples), size=budget, replace=False)))
        batches = examples.batches(
            self.config.batch_size, seed=self.config.seed, epoch=len(self.stats.rounds), shuffle=True,
            by_length=self.config.length_bucketing,
        )  # fmt: skip
        for batch in batches:
            self.model.train_step(batch)
            self.stats.steps += 1
        self.stats.examples += len(examples)


def _concatenate(parts: list[SequenceExamples]) -> SequenceExamples:
    """One SequenceExamples of ``parts`` (same max_len and num_items), rows in order."""

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(part, name) for part in parts])

    return SequenceExamples(
        user_ids=joined("user_ids"), item_indices=joined("item_indices"), action_ids=joined("action_ids"),
        timestamps=joined("timestamps"), lengths=joined("lengths"), targets=joined("targets"),
        num_items=parts[0].num_items,
    )  # fmt: skip


def _next_offsets(rows: pa.Table, offsets: dict[int, int]) -> dict[int, int]:
    """``offsets`` (partition -> next offset) moved past the Kafka positions of ``rows``."""
    merged = dict(offsets)
    if len(rows) == 0:
        return merged
    found = rows.group_by("kafka_partition").aggregate([("kafka_offset", "max")])
    for partition, offset in zip(found.column(0).to_pylist(), found.column(1).to_pylist(), strict=True):
        merged[int(partition)] = max(merged.get(int(partition), 0), int(offset) + 1)
    return merged


def _waited_s(delta: ModelDelta, since_us: int) -> float:
    return max(0.0, delta.published_ms / 1000 - since_us / 1e6)


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT and SIGTERM (Ctrl-C, ``kill``): the loop then publishes and returns."""
    import signal

    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def follow_config(config_fields: dict[str, object], base: ModelInfo) -> TrainConfig:
    """The follow job's TrainConfig: ``config_fields`` on the base's encoder, the item table at
    ``FOLLOW_TABLE_LR_SCALE`` of its learning rate unless the fields name ``warm_start_lr_scale``."""
    fields = {"warm_start_lr_scale": FOLLOW_TABLE_LR_SCALE, **config_fields, "encoder": base.encoder.model_dump()}
    return TrainConfig.model_validate(fields)


def follow(
    settings: Settings,
    config_fields: dict[str, object],
    base_version: int | None,
    publish_every_s: float,
    log: Log = print,
) -> FollowStats:
    """`streamrec train --follow`: load the base, run until SIGINT/SIGTERM, publish, return."""
    options = FollowOptions.from_settings(settings, publish_every_s)
    stop = stop_on_signals()  # before the slow start: a SIGTERM while it loads stops it after one publish
    base = load_base(settings, base_version, log)
    job = FollowJob(settings, base, follow_config(config_fields, base.info), options, log=log)
    log(
        f"following silver/events every {options.poll_s:g} s, a delta every {options.publish_every_s:g} s "
        "(Ctrl-C stops)"
    )
    stats = job.run(stop)
    log(f"stopped: {stats.events:,} events learned, {stats.steps:,} steps, {stats.deltas} deltas published")
    return stats

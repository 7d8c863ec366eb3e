"""The follow job (training/streaming/follow.py) on a tiny lake in a temp dir: unit tier (no
services; the first feature tables from the build's Arrow transforms, a random base model)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from deltalake import DeltaTable
from followlake import (
    CONFIG,
    START_MS,
    append_silver,
    base_model,
    build_features,
    events,
    first_build,
    history,
    history_lake,
    lake_settings,
)

from features.tables import ITEM_VOCAB_TABLE, USER_SEQUENCES_TABLE, recorded_state
from infra.settings import Settings
from training.common.model import PLAIN_WEIGHT
from training.streaming.deltas import MODEL_DELTAS_TABLE, DeltaPosition, ModelDelta, ModelDeltaTable, SequenceConflict
from training.streaming.dense import decode_dense_weights
from training.streaming.follow import (
    FOLLOW_TABLE_LR_SCALE,
    FollowBase,
    FollowJob,
    FollowOptions,
    follow_config,
    stop_on_signals,
)

BASE_ITEMS = 30  # followlake.history's items


@pytest.fixture
def lake(tmp_path: Path) -> Settings:
    return history_lake(tmp_path)


@pytest.fixture
def base(lake: Settings) -> FollowBase:
    return base_model(lake)


def _job(settings: Settings, base: FollowBase, lines: list[str] | None = None, **options: Any) -> FollowJob:
    return FollowJob(settings, base, CONFIG, FollowOptions(**options), log=(lines if lines is not None else []).append)


def _new_events(settings: Settings, tag: str, users: list[int], items: list[int], offset: int) -> int:
    return append_silver(settings, events(users, items, START_MS + 10**7 + offset * 1000, tag), offset)


def _deltas(settings: Settings, base: FollowBase) -> list[ModelDelta]:
    table = ModelDeltaTable(settings.table_uri(MODEL_DELTAS_TABLE))
    return list(table.after(DeltaPosition(settings.mlflow.registered_model, base.version), width=CONFIG.encoder.dim))


def _rows(settings: Settings, name: str, key: str, value: str) -> dict[Any, Any]:
    table = DeltaTable(settings.table_uri(name)).to_pyarrow_table()
    return dict(zip(table.column(key).to_pylist(), table.column(value).to_pylist(), strict=True))


def _state(job: FollowJob) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in job.model.state()}


def test_a_round_learns_the_new_rows_and_the_delta_holds_every_changed_row(lake: Settings, base: FollowBase) -> None:
    job = _job(lake, base)
    assert job.round() == 0 and job.publish() is None  # nothing new: no delta
    silver = _new_events(lake, "n", [1, 2, 3, 1, 2, 3], [4, 5, 6, 7, 8, 9], 500)
    assert job.round() == 6
    assert job.stats.steps >= 1 and job.stats.rounds == [(0, silver, 6)]
    delta = job.publish()
    assert delta is not None and delta.sequence == 1 and delta.silver_version == silver
    table = base.weights[PLAIN_WEIGHT]
    now = job.model.table.weight.detach()[: BASE_ITEMS + 1]
    moved = np.flatnonzero((now != table).any(dim=1).numpy())
    assert len(moved) > 0 and set(moved) <= set(delta.item_indices.tolist())  # no changed row left out
    assert np.array_equal(delta.item_vectors, job.model.table.weight.detach()[delta.item_indices].numpy())
    assert 0 not in delta.item_indices
    encoder = decode_dense_weights(delta.dense_weights or b"")
    assert all(torch.equal(encoder[key], value) for key, value in job.model.encoder.state_dict().items())
    offsets = DeltaTable(lake.table_uri("silver/events")).to_pyarrow_table(columns=["kafka_partition", "kafka_offset"])
    expected = {}
    for partition, offset in zip(offsets.column(0).to_pylist(), offsets.column(1).to_pylist(), strict=True):
        expected[partition] = max(expected.get(partition, 0), offset + 1)
    assert dict(delta.kafka_offsets) == expected
    assert job.publish() is None  # published: nothing pending
    assert delta.new_items == {} and _job(lake, base).cursor == silver  # a restart after a delta without new items


def test_a_restart_rebuilds_base_plus_deltas_and_learns_each_silver_version_once(
    lake: Settings, base: FollowBase
) -> None:
    """kill -9 after a round that was not published: the restarted job's state is the state at
    the last delta, it resumes after that delta's silver version and learns the lost round once."""
    first = _job(lake, base)
    v1 = _new_events(lake, "a", [1, 2, 3, 4], [4, 5, 31, 32], 500)  # two items new since the base
    first.round()
    first.publish()
    published = _state(first)
    v2 = _new_events(lake, "b", [5, 6, 1], [7, 33, 8], 600)
    first.round()
    assert first.stats.rounds[-1] == (v1, v2, 3)  # learned, never published: lost with the process

    lines: list[str] = []
    second = _job(lake, base, lines)
    restored = _state(second)
    assert restored.keys() == published.keys()
    for key, value in published.items():
        assert torch.equal(restored[key][: len(value)], value), key
    # The lost round's new item kept its vocabulary index: the restarted job gives it its row again.
    assert len(restored[PLAIN_WEIGHT]) == len(published[PLAIN_WEIGHT]) + 1
    assert second.cursor == v1 and second.position.sequence == 1
    assert any(f"resumed after delta streamrec-retrieval v1 #1 at silver/events version {v1}" in line for line in lines)
    assert second.round() == 3 and second.stats.rounds == [(v1, v2, 3)]
    second.publish()
    chain = _deltas(lake, base)
    assert [(d.sequence, d.silver_version) for d in chain] == [(1, v1), (2, v2)]
    assert second.round() == 0 and _job(lake, base).cursor == v2


def test_new_items_take_headroom_rows_and_the_vocabulary_stays_the_one_index_authority(
    lake: Settings, base: FollowBase
) -> None:
    job = _job(lake, base)
    silver = _new_events(lake, "n", [1, 2, 3, 1], [100, 101, 100, 5], 500)
    job.round()
    delta = job.publish()
    assert delta is not None and delta.new_items == {"i100": BASE_ITEMS + 1, "i101": BASE_ITEMS + 2}
    assert {BASE_ITEMS + 1, BASE_ITEMS + 2} <= set(delta.item_indices.tolist())
    vocab = _rows(lake, ITEM_VOCAB_TABLE, "item_id", "item_index")
    assert vocab["i100"] == BASE_ITEMS + 1 and vocab["i101"] == BASE_ITEMS + 2
    assert recorded_state(lake.table_uri(ITEM_VOCAB_TABLE)) == (silver, lake.features.max_len)
    # The next feature build agrees: the items keep their indices, the sequences use them.
    build_features(lake)
    after = _rows(lake, ITEM_VOCAB_TABLE, "item_id", "item_index")
    assert after == vocab
    sequences = _rows(lake, USER_SEQUENCES_TABLE, "user_id", "item_indices")
    assert sequences["u2"][-1] == BASE_ITEMS + 2
    # A build in between (another writer of the vocabulary) changes nothing: indices come from the table.
    _new_events(lake, "m", [4], [102], 600)
    build_features(lake)
    job.round()
    assert job.publish().new_items == {"i102": BASE_ITEMS + 3}  # type: ignore[union-attr]


def test_used_up_headroom_is_said_and_learning_goes_on_for_the_items_with_rows(
    lake: Settings, base: FollowBase
) -> None:
    lines: list[str] = []
    job = _job(lake, base, lines, headroom=1)
    _new_events(lake, "n", [1, 2, 3, 1, 2, 3], [100, 101, 102, 4, 5, 6], 500)
    job.round()
    delta = job.publish()
    assert delta is not None and delta.new_items == {"i100": BASE_ITEMS + 1}
    assert job.model.known_items == BASE_ITEMS + 1 and job.stats.steps >= 1
    said = [line for line in lines if "headroom used up" in line]
    assert len(said) == 1 and "2 items have no row" in said[0] and "next full version" in said[0]
    vocab = DeltaTable(lake.table_uri(ITEM_VOCAB_TABLE)).to_pyarrow_table()
    assert {"i101", "i102"} <= set(vocab.column("item_id").to_pylist())  # indexed all the same
    assert int(delta.item_indices.max()) == BASE_ITEMS + 1


def test_the_encoder_is_published_only_when_a_step_changed_it(lake: Settings, base: FollowBase) -> None:
    job = _job(lake, base, replay_ratio=0.0)
    _new_events(lake, "n", [40], [100], 500)  # a new user's first event: nothing to predict yet
    assert job.round() == 1 and job.stats.steps == 0
    delta = job.publish()
    assert delta is not None and delta.dense_weights is None and delta.new_items == {"i100": BASE_ITEMS + 1}
    assert delta.item_indices.tolist() == [BASE_ITEMS + 1]


def test_deltas_come_every_publish_every_s_and_stopping_publishes_what_was_learned(
    lake: Settings, base: FollowBase
) -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 7.0
        return now[0]

    job = FollowJob(lake, base, CONFIG, FollowOptions(publish_every_s=30, poll_s=0.001), log=lambda line: None,
                    clock=clock)  # fmt: skip
    stop = threading.Event()
    published_at: list[float] = []
    rounds = [0]
    publish, round_ = job.publish, job.round

    def counting_publish() -> ModelDelta | None:
        delta = publish()
        if delta is not None:
            published_at.append(now[0])
        return delta

    def feeding_round() -> int:
        rounds[0] += 1
        if rounds[0] % 2 == 0:
            _new_events(lake, f"r{rounds[0]}", [rounds[0] % 10], [rounds[0] % 30], 500 + rounds[0])
        if rounds[0] == 40:
            stop.set()
        return round_()

    job.publish, job.round = counting_publish, feeding_round  # type: ignore[method-assign]
    job.run(stop)
    gaps = np.diff([0.0, *published_at[:-1]])
    assert len(published_at) >= 5 and all(30 <= gap <= 30 + 3 * 7 for gap in gaps), published_at
    chain = _deltas(lake, base)
    assert chain[-1].silver_version == DeltaTable(lake.table_uri("silver/events")).version()
    assert [d.silver_version for d in chain] == sorted({d.silver_version for d in chain})  # strictly increasing


def test_sigterm_and_ctrl_c_set_the_stop_event() -> None:
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            stop = stop_on_signals()
            os.kill(os.getpid(), signum)
            assert stop.wait(5)
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def test_a_base_with_another_encoder_or_a_smaller_headroom_than_its_deltas_is_refused(
    lake: Settings, base: FollowBase
) -> None:
    with pytest.raises(ValueError, match="trains the base's encoder"):
        FollowJob(lake, base, CONFIG.model_copy(update={"encoder": CONFIG.encoder.model_copy(update={"dim": 16})}),
                  FollowOptions())  # fmt: skip
    job = _job(lake, base, headroom=5)
    _new_events(lake, "n", [1, 2, 3], [100, 101, 102], 500)
    job.round()
    job.publish()
    with pytest.raises(ValueError, match="beyond this table"):
        _job(lake, base, headroom=1)


def test_bad_options_are_refused() -> None:
    for bad in ({"publish_every_s": 0}, {"poll_s": -1}, {"max_steps": 0}, {"replay_ratio": -0.5}, {"headroom": -1}):
        with pytest.raises(ValueError):
            FollowOptions(**bad)


def test_a_second_job_on_the_same_base_is_refused_at_its_first_publish(lake: Settings, base: FollowBase) -> None:
    first, second = _job(lake, base), _job(lake, base)
    _new_events(lake, "n", [1, 2], [4, 5], 500)
    first.round()
    second.round()
    first.publish()
    with pytest.raises(SequenceConflict):
        second.publish()
    assert [d.sequence for d in _deltas(lake, base)] == [1]


def test_sigterm_stops_the_command_after_it_publishes_what_it_learned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`follow` (what `streamrec train --follow` runs) with a delta due only in an hour: SIGTERM
    makes it publish the rows it learned, then return."""
    from training.streaming import follow as follow_module

    settings = lake_settings(tmp_path, train_follow_poll_s=0.05)
    first_build(settings, history())
    base = base_model(settings)
    monkeypatch.setattr(follow_module, "load_base", lambda settings, version, log: base)
    lines: list[str] = []
    appended: list[int] = []

    def feed_then_terminate() -> None:
        appended.append(_new_events(settings, "n", [1, 2, 3], [4, 100, 6], 500))
        deadline = time.monotonic() + 60
        while not any("vocabulary: 1 new items" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.05)  # the round that read the events has begun
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    feeder = threading.Thread(target=feed_then_terminate)
    try:
        feeder.start()
        stats = follow_module.follow(settings, {}, None, 3600.0, log=lines.append)
    finally:
        feeder.join(60)
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    chain = _deltas(settings, base)
    assert [(d.sequence, d.silver_version) for d in chain] == [(1, appended[0])]
    assert chain[0].new_items == {"i100": BASE_ITEMS + 1} and stats.events == 3 and stats.deltas == 1
    assert lines[-1].startswith("stopped: 3 events learned")


def test_the_follow_job_trains_the_table_at_its_full_rate_unless_the_config_names_a_scale(base: FollowBase) -> None:
    """A warm start's 0.1 left new items' rows near their random start (docs/training.md)."""
    full_rate = follow_config({}, base.info).table_optimizer(use_gpu=False)[1]
    default = follow_config({}, base.info)
    assert default.warm_start_lr_scale == FOLLOW_TABLE_LR_SCALE == 1.0
    assert default.warm_started(use_gpu=False).table_optimizer(use_gpu=False)[1] == pytest.approx(full_rate)
    named = follow_config({"warm_start_lr_scale": 0.1}, base.info)
    assert named.warm_started(use_gpu=False).table_optimizer(use_gpu=False)[1] == pytest.approx(0.1 * full_rate)
    assert default.encoder == base.info.encoder

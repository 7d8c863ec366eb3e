"""FollowJob.consume, the follow loop's learning step driven without a publisher (benchmarks.continual
feeds a silver version an hour at a time): unit tier, the tiny lake of followlake."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable
from followlake import CONFIG, START_MS, append_silver, base_model, events, history_lake

from features.silver import silver_changes
from features.tables import ITEM_VOCAB_TABLE, recorded_state
from infra.settings import Settings
from ingestion.schema import SILVER_TABLE
from training.streaming.follow import SILVER_COLUMNS, FollowBase, FollowJob, FollowOptions

BASE_ITEMS = 30  # followlake.history's items


@pytest.fixture
def lake(tmp_path: Path) -> Settings:
    return history_lake(tmp_path)


@pytest.fixture
def base(lake: Settings) -> FollowBase:
    return base_model(lake)


def _job(settings: Settings, base: FollowBase) -> FollowJob:
    return FollowJob(settings, base, CONFIG, FollowOptions(), log=lambda line: None)


def test_a_version_fed_in_parts_indexes_each_part_and_ends_where_a_round_ends(lake: Settings, base: FollowBase) -> None:
    late = START_MS + 10**7
    silver = append_silver(lake, events([1, 2, 3, 4, 5, 6], [4, 100, 5, 101, 100, 6], late, "n"), 500)
    rows = silver_changes(lake.table_uri(SILVER_TABLE), 0, silver, SILVER_COLUMNS).new_rows
    early = pc.less(rows.column("ts"), late + 3000)  # the first three events: item i100 new, i101 not yet
    job = _job(lake, base)
    vocab_uri = lake.table_uri(ITEM_VOCAB_TABLE)
    recorded_before = recorded_state(vocab_uri)

    assert job.consume(rows.filter(early), job.cursor) == 3
    assert job.cursor == 0 and job.model.known_items == BASE_ITEMS + 1  # i100 has a row, i101 none yet
    assert recorded_state(vocab_uri) == recorded_before  # the vocabulary does not claim the whole version
    vocab = DeltaTable(vocab_uri).to_pyarrow_table()
    assert "i101" not in vocab.column("item_id").to_pylist()

    assert job.consume(rows.filter(pc.invert(early)), silver) == 3
    assert job.cursor == silver and job.model.known_items == BASE_ITEMS + 2
    assert recorded_state(vocab_uri) == (silver, lake.features.max_len)
    assert job.stats.events == 6 and job.stats.rounds == [(0, 0, 3), (0, silver, 3)] and job.stats.steps >= 2

    whole = _job(lake, base)  # a job that starts now finds the same vocabulary and learns the version at once
    assert whole.round() == 6 and whole.cursor == silver
    assert whole.histories.rows.sort_by("user_id").equals(job.histories.rows.sort_by("user_id"))
    assert job.publish() is not None and job.publish() is None  # parts publish like rounds

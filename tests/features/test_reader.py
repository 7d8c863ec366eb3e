"""features.reader: splits with known answers, pinned versions, determinism (no Spark)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from featuredata import write_sequences

from features.reader import FeatureVersions, latest_versions, load_examples
from infra.settings import Settings, get_settings
from ingestion.schema import ACTION_IDS

# u1: 4 positives (click, view, like, purchase) with negatives and an impression between.
# u2: 2 positives -> train only.  u3: one event -> train only.
USERS = {
    "u1": [(1, "click", 10), (2, "skip", 20), (3, "view", 30), (4, "like", 40), (5, "impression", 50),
           (6, "purchase", 60), (7, "dislike", 70)],
    "u2": [(2, "click", 15), (3, "click", 25)],
    "u3": [(9, "like", 5)],
}  # fmt: skip


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = get_settings(home=tmp_path)
    write_sequences(settings, USERS, num_items=9)
    return settings


def _ids(*actions: str) -> list[int]:
    return [ACTION_IDS[action] for action in actions]


def test_leave_last_out_test_split(settings: Settings) -> None:
    examples = load_examples(settings, "test", max_len=8)
    assert examples.user_ids.tolist() == ["u1"]
    assert examples.targets.tolist() == [6]  # the last positive: purchase of item 6
    assert examples.lengths.tolist() == [5]
    assert examples.item_indices.tolist() == [[1, 2, 3, 4, 5, 0, 0, 0]]
    assert examples.action_ids.tolist() == [_ids("click", "skip", "view", "like", "impression") + [0, 0, 0]]
    assert examples.timestamps.tolist() == [[10, 20, 30, 40, 50, 0, 0, 0]]
    assert examples.num_items == 9


def test_leave_last_out_validation_and_train(settings: Settings) -> None:
    validation = load_examples(settings, "validation", max_len=8)
    assert validation.user_ids.tolist() == ["u1"]
    assert validation.targets.tolist() == [4]  # second-to-last positive: like of item 4
    assert validation.item_indices[0, :4].tolist() == [1, 2, 3, 0]

    train = load_examples(settings, "train", max_len=8)
    assert train.user_ids.tolist() == ["u1", "u2", "u3"]
    assert train.targets.tolist() == [0, 0, 0]
    assert train.lengths.tolist() == [3, 2, 1]  # u1 stops before the validation target
    assert train.item_indices[:, :3].tolist() == [[1, 2, 3], [2, 3, 0], [9, 0, 0]]


def test_history_is_truncated_to_the_last_max_len(settings: Settings) -> None:
    examples = load_examples(settings, "test", max_len=2)
    assert examples.item_indices.tolist() == [[4, 5]]
    assert examples.timestamps.tolist() == [[40, 50]]
    assert examples.lengths.tolist() == [2]


def test_time_split(settings: Settings) -> None:
    train = load_examples(settings, "train", max_len=4, split_mode="time", split_ts=30)
    assert train.user_ids.tolist() == ["u1", "u2", "u3"]
    assert train.lengths.tolist() == [2, 2, 1]  # ts < 30
    assert train.item_indices.tolist() == [[1, 2, 0, 0], [2, 3, 0, 0], [9, 0, 0, 0]]

    test = load_examples(settings, "test", max_len=4, split_mode="time", split_ts=30)
    # u1: first positive at/after 30 is the view of item 3 at ts 30; u2 and u3 have none.
    assert test.user_ids.tolist() == ["u1"]
    assert test.targets.tolist() == [3]
    assert test.item_indices.tolist() == [[1, 2, 0, 0]]

    # u2's first positive at/after 12 is its first event: no history, so it is dropped.
    early = load_examples(settings, "test", max_len=4, split_mode="time", split_ts=12)
    assert early.user_ids.tolist() == ["u1"]
    assert early.targets.tolist() == [3]
    assert early.lengths.tolist() == [2]


def test_bad_arguments_are_clear_errors(settings: Settings) -> None:
    with pytest.raises(ValueError, match="unknown split"):
        load_examples(settings, "holdout")
    with pytest.raises(ValueError, match="split_ts"):
        load_examples(settings, "test", split_mode="time")
    with pytest.raises(ValueError, match="train and test only"):
        load_examples(settings, "validation", split_mode="time", split_ts=1)
    with pytest.raises(ValueError, match="split_mode"):
        load_examples(settings, "test", split_mode="random")


def test_missing_tables_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="streamrec features build"):
        latest_versions(get_settings(home=tmp_path))


def test_pinned_versions_give_the_same_examples_and_shards(settings: Settings) -> None:
    first = latest_versions(settings)
    before = load_examples(settings, "train", first, max_len=8)
    write_sequences(settings, {"u9": [(1, "click", 1), (2, "click", 2)]}, num_items=9, mode="overwrite")
    assert latest_versions(settings) == FeatureVersions(item_vocab=1, user_sequences=1)

    again = load_examples(settings, "train", first, max_len=8)
    assert again.versions == {"features/item_vocab": 0, "features/user_sequences": 0}
    for name in ("user_ids", "item_indices", "action_ids", "timestamps", "lengths", "targets"):
        assert np.array_equal(getattr(before, name), getattr(again, name)), name
    for rank in range(2):
        one = before.shard(rank, 2, seed=7, epoch=1, shuffle=True)
        two = again.shard(rank, 2, seed=7, epoch=1, shuffle=True)
        assert np.array_equal(one.user_ids, two.user_ids) and np.array_equal(one.valid, two.valid)
    assert load_examples(settings, "train", max_len=8).user_ids.tolist() == ["u9"]


def test_versions_that_do_not_match_are_refused(tmp_path: Path) -> None:
    settings = get_settings(home=tmp_path)
    write_sequences(settings, {"u1": [(5, "click", 1)]}, num_items=3)
    with pytest.raises(ValueError, match="item indices above 3"):
        load_examples(settings, "train")

"""SequenceExamples: shards are equal-sized, disjoint and covering; batches; validation."""

from __future__ import annotations

import numpy as np
import pytest

from features.examples import BATCH_KEYS, SequenceExamples


def _examples(rows: int, max_len: int = 4) -> SequenceExamples:
    lengths = np.arange(rows, dtype=np.int64) % max_len + 1
    items = np.where(np.arange(max_len)[None, :] < lengths[:, None], np.arange(rows)[:, None] + 1, 0).astype(np.int64)
    return SequenceExamples(
        user_ids=np.array([f"u{row}" for row in range(rows)]),
        item_indices=items,
        action_ids=(items > 0).astype(np.int64) * 2,
        timestamps=items * 1000,
        lengths=lengths,
        targets=np.arange(rows, dtype=np.int64) + 100,
        num_items=rows,
    )


@pytest.mark.parametrize(("rows", "world"), [(10, 3), (12, 4), (5, 8), (1, 2)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_shards_are_equal_disjoint_and_cover_every_row(rows: int, world: int, shuffle: bool) -> None:
    examples = _examples(rows)
    shards = [examples.shard(rank, world, seed=3, epoch=2, shuffle=shuffle) for rank in range(world)]
    assert len({len(shard) for shard in shards}) == 1
    assert len(shards[0]) == -(-rows // world)
    real = np.concatenate([shard.user_ids[shard.valid] for shard in shards])
    assert sorted(real.tolist()) == sorted(examples.user_ids.tolist())  # disjoint and covering
    for shard in shards:  # rows stay whole: a user's items and target travel together
        index = np.array([int(user[1:]) for user in shard.user_ids])
        assert np.array_equal(shard.item_indices, examples.item_indices[index])
        assert np.array_equal(shard.targets, examples.targets[index])


def test_shuffle_depends_on_seed_and_epoch_only() -> None:
    examples = _examples(50)
    order = examples.shard(0, 2, seed=1, epoch=0, shuffle=True).user_ids
    assert np.array_equal(order, examples.shard(0, 2, seed=1, epoch=0, shuffle=True).user_ids)
    assert not np.array_equal(order, examples.shard(0, 2, seed=1, epoch=1, shuffle=True).user_ids)
    assert not np.array_equal(order, examples.shard(0, 2, seed=2, epoch=0, shuffle=True).user_ids)


def test_bad_rank_is_refused() -> None:
    with pytest.raises(ValueError, match="outside world size"):
        _examples(4).shard(2, 2)


def test_batches_hold_every_row_once_as_tensors() -> None:
    examples = _examples(10)
    batches = list(examples.batches(4, seed=0, epoch=0, shuffle=True))
    assert [len(batch["lengths"]) for batch in batches] == [4, 4, 2] and examples.num_batches(4) == 3
    assert all(set(batch) == set(BATCH_KEYS) for batch in batches)
    targets = np.concatenate([batch["targets"].numpy() for batch in batches])
    assert sorted(targets.tolist()) == examples.targets.tolist()
    assert batches[0]["item_indices"].shape == (4, 4)


def test_inconsistent_shapes_are_refused() -> None:
    examples = _examples(3)
    with pytest.raises(ValueError, match="action_ids has shape"):
        SequenceExamples(
            user_ids=examples.user_ids,
            item_indices=examples.item_indices,
            action_ids=examples.action_ids[:, :2],
            timestamps=examples.timestamps,
            lengths=examples.lengths,
            targets=examples.targets,
            num_items=3,
        )
    with pytest.raises(ValueError, match="lengths must lie"):
        SequenceExamples(
            user_ids=examples.user_ids,
            item_indices=examples.item_indices,
            action_ids=examples.action_ids,
            timestamps=examples.timestamps,
            lengths=examples.lengths + 10,
            targets=examples.targets,
            num_items=3,
        )


def test_length_grouped_batches_cover_every_row_with_less_padding() -> None:
    rng = np.random.default_rng(0)
    base = _examples(1_000, max_len=50)
    examples = SequenceExamples(**{**base.__dict__, "lengths": rng.integers(1, 51, 1_000)})
    plain = list(examples.batches(32, seed=1, epoch=2, shuffle=True))
    grouped = list(examples.batches(32, seed=1, epoch=2, shuffle=True, by_length=True))
    assert len(grouped) == len(plain) == examples.num_batches(32)
    users = np.concatenate([batch["targets"].numpy() for batch in grouped])
    assert sorted(users.tolist()) == sorted(examples.targets.tolist())  # every row exactly once

    def padded_positions(batches: list) -> int:  # what a batch padded to its longest row costs
        return sum(int(batch["lengths"].max()) * len(batch["lengths"]) for batch in batches)

    assert padded_positions(grouped) < 0.7 * padded_positions(plain)
    again = list(examples.batches(32, seed=1, epoch=2, shuffle=True, by_length=True))
    assert all(np.array_equal(a["targets"], b["targets"]) for a, b in zip(grouped, again, strict=True))
    other_epoch = list(examples.batches(32, seed=1, epoch=3, shuffle=True, by_length=True))
    assert not np.array_equal(grouped[0]["targets"], other_epoch[0]["targets"])

"""The data-fraction subsample of users: deterministic, nested, about the share asked for."""

from __future__ import annotations

import numpy as np
import pytest

from features.examples import SequenceExamples
from features.subsample import in_fraction, subsample_users, user_position

USERS = np.array([f"user-{index}" for index in range(4_000)])


def test_the_subsample_is_the_same_in_every_process_and_order() -> None:
    kept = in_fraction(USERS, 0.3)
    assert np.array_equal(kept, in_fraction(USERS, 0.3))
    shuffled = np.random.default_rng(0).permutation(len(USERS))
    assert np.array_equal(in_fraction(USERS[shuffled], 0.3), kept[shuffled])  # a user's fate is their own
    # A hash of the id alone (no seed, not Python's per-process hash()): the same users in every run.
    assert user_position("user-0") == pytest.approx(0.1714, abs=1e-4)
    assert in_fraction(USERS[:6], 0.5).tolist() == [True, False, True, False, False, False]


def test_smaller_fractions_are_nested_inside_larger_ones_and_keep_about_their_share() -> None:
    quarter, half, whole = (in_fraction(USERS, fraction) for fraction in (0.25, 0.5, 1.0))
    assert not (quarter & ~half).any()  # every user of 25% is in 50%
    assert whole.all()
    assert abs(quarter.mean() - 0.25) < 0.03 and abs(half.mean() - 0.5) < 0.03


def test_subsample_users_keeps_the_rows_of_the_kept_users_in_order() -> None:
    rows = len(USERS)
    examples = SequenceExamples(
        user_ids=USERS, item_indices=np.ones((rows, 3), dtype=np.int64), action_ids=np.ones((rows, 3), dtype=np.int64),
        timestamps=np.ones((rows, 3), dtype=np.int64), lengths=np.full(rows, 3), targets=np.zeros(rows, dtype=np.int64),
        num_items=1,
    )  # fmt: skip
    half = subsample_users(examples, 0.5)
    assert half.user_ids.tolist() == USERS[in_fraction(USERS, 0.5)].tolist()
    assert subsample_users(examples, 1.0) is examples


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.01])
def test_a_fraction_outside_zero_one_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"is outside \(0, 1\]"):
        in_fraction(USERS, fraction)

"""A deterministic, nested subsample of users: the data-size axis of a scaling sweep.

A user is in the ``fraction`` subsample when a hash of their id, read as a number in [0, 1),
is below ``fraction``. The same id always gives the same number (no seed, no process state),
so every Ray Train worker and every later run picks the same users, and the subsamples nest:
the users of 25% are inside those of 50%, which are inside 100%.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # features.examples imports torch: the CLI (training.sweep.spec) must not
    from features.examples import SequenceExamples

HASH_SCALE = float(2**64)


def user_position(user_id: str) -> float:
    """Where ``user_id`` falls in [0, 1): the first 8 bytes of its BLAKE2b digest over 2**64."""
    digest = hashlib.blake2b(str(user_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / HASH_SCALE


def check_fraction(fraction: float) -> float:
    """``fraction`` itself when it lies in (0, 1]; a ValueError that says so otherwise."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data fraction {fraction:g} is outside (0, 1]: it is the share of users kept")
    return fraction


def in_fraction(user_ids: Iterable[str], fraction: float) -> np.ndarray:
    """(N,) bool: which of ``user_ids`` the ``fraction`` subsample keeps."""
    check_fraction(fraction)
    positions = np.fromiter((user_position(user) for user in user_ids), dtype=np.float64)
    return positions < fraction


def subsample_users(examples: SequenceExamples, fraction: float) -> SequenceExamples:
    """The rows of ``examples`` whose users the ``fraction`` subsample keeps, in their order
    (``examples`` itself at fraction 1)."""
    if check_fraction(fraction) == 1.0:
        return examples
    return examples.take(np.flatnonzero(in_fraction(examples.user_ids, fraction)))

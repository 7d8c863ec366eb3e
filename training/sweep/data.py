"""What a trial's training data is: its users, tokens, mean history length and approximate
entropy, for one history length and data fraction of the pinned train split.

Approximate entropy (ApEn, Pincus 1991) measures how unpredictable a sequence is from its own
recent past: ApEn(m) = Phi_m - Phi_{m+1}, where Phi_k is the mean log frequency, within the
sequence, of each length-k window. Item ids are categories, so windows match only exactly
(tolerance r = 0). It is the entropy of the next item given the previous one, estimated within the
user's own history: a user who replays the same loop scores about 0, a user who comes back to the
same items and goes on somewhere different each time scores high, and a user who never comes back
to an item gives no evidence either way (about 0; the estimator's bias makes it slightly negative).
A dataset's ApEn is the mean over its users, so it does not shrink or grow with the data fraction.
The Performance Law of Shen et al. (2024, arXiv:2412.00430) uses it as the data's quality: the
same number of tokens teaches less when they are repetitive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.examples import SequenceExamples
from features.subsample import subsample_users

# m: one item predicts the next. Histories are short against catalogues of thousands of items, so
# windows of 2 almost never recur within a history and ApEn(2) reads about 0 for nearly every user.
APEN_WINDOW = 1
APEN_MAX_USERS = 5_000  # ApEn of a large split is the mean over this many users, spread evenly over it


@dataclass(frozen=True)
class DataStats:
    """A trial's training rows: users, tokens (events read), mean history length, mean ApEn."""

    users: int
    tokens: int
    mean_length: float
    apen: float


def data_stats(train: SequenceExamples, fraction: float) -> DataStats:
    """The stats of the ``fraction`` subsample of ``train`` (histories already cut to max_len)."""
    rows = subsample_users(train, fraction)
    lengths = rows.lengths
    return DataStats(
        users=len(rows),
        tokens=int(lengths.sum()),
        mean_length=float(lengths.mean()) if len(rows) else 0.0,
        apen=dataset_apen(rows),
    )


def dataset_apen(rows: SequenceExamples, m: int = APEN_WINDOW, max_users: int = APEN_MAX_USERS) -> float:
    """Mean ApEn(m) of the item sequences of ``rows`` long enough to have one (m + 2 events);
    over at most ``max_users`` of them, evenly spaced; 0 when none is long enough."""
    long_enough = np.flatnonzero(rows.lengths >= m + 2)
    if len(long_enough) > max_users:
        long_enough = long_enough[np.linspace(0, len(long_enough) - 1, max_users).astype(int)]
    values = [approximate_entropy(rows.item_indices[row, : rows.lengths[row]], m) for row in long_enough]
    return float(np.mean(values)) if values else 0.0


def approximate_entropy(sequence: np.ndarray, m: int = APEN_WINDOW) -> float:
    """ApEn(m, r=0) of one categorical sequence (at least m + 2 long)."""
    if len(sequence) < m + 2:
        raise ValueError(f"ApEn({m}) needs a sequence of at least {m + 2} items, not {len(sequence)}")
    return _phi(sequence, m) - _phi(sequence, m + 1)


def _phi(sequence: np.ndarray, width: int) -> float:
    """Mean over the sequence's length-``width`` windows of the log share of windows equal to it."""
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(sequence), width)
    _, inverse, counts = np.unique(windows, axis=0, return_inverse=True, return_counts=True)
    return float(np.mean(np.log(counts[inverse.reshape(-1)] / len(windows))))

"""The TorchRec streaming probe's own logic: how a check's ranks are summarised and what a
batch of raw-id lookups looks like (the checks themselves need gloo processes: the probe runs them)."""

from __future__ import annotations

import numpy as np

from benchmarks.streaming.probe_torchrec import ERROR_CHARS, ProbeConfig, raw_lookups, summarise
from training.common.sharded_table import CANDIDATES, HISTORY


def test_a_check_fails_when_any_rank_failed_and_keeps_the_start_of_its_error() -> None:
    long_error = "NotImplementedError: no CPU kernel " + "x" * 2 * ERROR_CHARS
    traceback = 'Traceback\n  File "a.py", line 1, in f\n  File "b.py", line 2, in g\nError'
    outcome = summarise(
        [{"ok": True, "rank": 0, "figure": 1}, {"ok": False, "rank": 1, "error": long_error, "traceback": traceback}]
    )
    assert not outcome["ok"]
    assert outcome["error"].startswith("NotImplementedError: no CPU kernel") and outcome["error"].endswith("(cut)")
    assert len(outcome["error"]) < len(long_error)
    assert outcome["raised_at"] == 'File "b.py", line 2, in g'
    assert outcome["failed_ranks"] == [1]
    assert outcome["ranks"] == [{"rank": 0, "figure": 1}]
    assert summarise([{"ok": True, "rank": 0}])["ok"]


def test_raw_lookups_draw_each_pool_and_put_the_candidates_in_one_row() -> None:
    config = ProbeConfig(batch=8, max_len=5, negatives=6)
    old, new = np.arange(100, 110), np.arange(1_000, 1_010)
    lookups = raw_lookups(config, [(old, 0.5), (new, 0.5)], np.random.default_rng(0))
    history, candidates = lookups[HISTORY], lookups[CANDIDATES]
    assert len(history.lengths()) == 8 and all(2 <= n <= 5 for n in history.lengths().tolist())
    assert candidates.lengths().tolist() == [6] + [0] * 7
    values = set(lookups.values().tolist())
    assert values <= set(old.tolist()) | set(new.tolist())
    assert values & set(old.tolist()) and values & set(new.tolist())

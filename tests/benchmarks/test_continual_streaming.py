"""The continual benchmark's streaming policy without services: the day's slices, the scoring of
each slice by its own model through the prequential evaluation, the policies a run picks, the
merge of a run of some policies into a file holding the others, and the streaming target."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from benchmarks.continual.run import chosen_policies, merge_streams, summarise
from benchmarks.continual.streaming import chunk_bounds, chunk_of, chunked_window_metrics, split_by_time
from features.splits import FlatSequences
from training.common.config import EncoderConfig
from training.common.model import build_encoder
from training.retrieval.prequential import TimeWindow, evaluate_window, window_rows
from training.retrieval.retriever import Retriever

HOUR = 3_600_000
DAY = 24 * HOUR


def test_a_day_is_cut_into_equal_slices_open_on_the_left() -> None:
    bounds = chunk_bounds(1_000, DAY, 24)
    assert len(bounds) == 25 and bounds[0] == 1_000 and bounds[-1] == 1_000 + DAY
    assert set(np.diff(bounds)) == {HOUR}
    ts = np.array([1_000 + 1, 1_000 + HOUR, 1_000 + HOUR + 1, 1_000 + DAY, 1_000 - 5, 1_000 + DAY + 5])
    assert chunk_of(ts, bounds).tolist() == [0, 0, 1, 23, 0, 23]  # (a, b]; outside the day: the edge slices
    rows = pa.table({"ts": ts, "event_id": [str(i) for i in range(len(ts))]})
    parts = split_by_time(rows, bounds)
    assert len(parts) == 24 and sum(len(part) for part in parts) == len(ts)
    assert parts[0].column("event_id").to_pylist() == ["0", "1", "4"] and len(parts[5]) == 0


ENCODER = EncoderConfig(kind="sasrec", dim=8, num_blocks=1, num_heads=1, max_len=6, dropout=0.0, ffn_dim=8)
ITEMS = 40
START = 10 * DAY


def _retriever(items: int, seed: int) -> Retriever:
    torch.manual_seed(seed)
    encoder = build_encoder(ENCODER).eval()
    return Retriever(encoder, torch.randn(items + 1, ENCODER.dim))


def _sequences() -> tuple[np.ndarray, FlatSequences, np.ndarray]:
    """30 users, 12 events each over a day and a half, items first seen at their first event."""
    rng = np.random.default_rng(0)
    users, per_user = 30, 12
    items = rng.integers(1, ITEMS + 1, size=users * per_user)
    ts = np.sort(rng.integers(START - DAY // 2, START + DAY, size=(users, per_user)), axis=1).ravel()
    actions = rng.integers(1, 4, size=users * per_user)
    first_seen = np.full(ITEMS + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_seen, items, ts)
    flat = FlatSequences(np.arange(0, users * per_user + 1, per_user), items, actions, ts)
    return np.array([f"u{u}" for u in range(users)]), flat, first_seen


def test_slices_scored_by_one_model_give_the_prequential_evaluation_of_that_model() -> None:
    user_ids, flat, first_seen = _sequences()
    window = TimeWindow(START, DAY)
    rows = window_rows(user_ids, flat, window, ENCODER.max_len, ITEMS)
    model = _retriever(ITEMS, 1)
    expected = evaluate_window(model, rows, first_seen, window, new_after_ms=START).metrics
    found = chunked_window_metrics([model] * 24, rows, first_seen, chunk_bounds(START, DAY, 24), START)
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        assert found[key] == pytest.approx(value, abs=1e-12), key


def test_each_slice_is_ranked_by_its_own_model_and_its_unknown_items_count_as_unknown() -> None:
    user_ids, flat, first_seen = _sequences()
    window = TimeWindow(START, DAY)
    rows = window_rows(user_ids, flat, window, ENCODER.max_len, ITEMS)
    bounds = chunk_bounds(START, DAY, 2)
    small, large = _retriever(ITEMS // 2, 1), _retriever(ITEMS, 2)
    found = chunked_window_metrics([small, large], rows, first_seen, bounds, START)
    in_first = chunk_of(rows.event_ts, bounds) == 0
    unknown = (rows.examples.targets > ITEMS // 2) & in_first
    assert found["window_unknown_target_share"] == pytest.approx(unknown.mean())
    both = chunked_window_metrics([large, large], rows, first_seen, bounds, START)
    assert both["window_unknown_target_share"] == 0 and both != found


def test_policies_are_checked_and_pick_their_streaming_variants() -> None:
    names, variants = chosen_policies("frozen,streaming", '{"streaming": {}, "fast": {"train": {"lr": 0.01}}}', 24)
    assert names == ["frozen", "streaming"] and [variant.name for variant in variants] == ["streaming"]
    _, variants = chosen_policies("fast,loop", '{"streaming": {}, "fast": {"train": {"lr": 0.01}}}', 24)
    assert [(variant.name, variant.train) for variant in variants] == [("fast", {"lr": 0.01})]
    with pytest.raises(SystemExit, match="unknown"):
        chosen_policies("frozen,stream", '{"streaming": {}}', 24)
    with pytest.raises(SystemExit, match="unknown keys"):
        chosen_policies("streaming", '{"streaming": {"lr": 1}}', 24)
    with pytest.raises(SystemExit, match="at least 1"):
        chosen_policies("streaming", '{"streaming": {}}', 0)


def _stream(seed: int, ndcg: dict[str, list[float]], train_s: dict[str, float], events: int = 100) -> dict[str, Any]:
    windows = [
        {
            "start_ms": START + w * DAY,
            "events": events,
            "metrics": {
                policy: {"window_ndcg_10": values[w], "window_new_ndcg_10": values[w] / 2}
                for policy, values in ndcg.items()
            },  # fmt: skip
            "versions": {policy: f"v{w}" for policy in ndcg},
        }
        for w in range(len(ndcg["frozen"]))
    ]
    return {"churn": 1.0, "seed": seed, "stream": {"users": 10}, "initial": {"version": "1"},
            "windows": windows, "train_s": train_s}  # fmt: skip


COMMITTED = {"frozen": [0.1, 0.05, 0.04], "loop": [0.1, 0.06, 0.05], "loop_candidate": [0.1, 0.07, 0.06],
             "retrain": [0.1, 0.08, 0.07]}  # fmt: skip


def test_a_run_of_the_streaming_policy_merges_into_the_stream_that_lacks_it(tmp_path: Path) -> None:
    ours = {"streams": [_stream(0, COMMITTED, {"loop": 1.0, "retrain": 2.0, "loop_gate": 0.5})]}
    streaming_run = _stream(0, {"frozen": [0.1, 0.05, 0.041], "streaming": [0.11, 0.09, 0.08]}, {"streaming": 7.0})
    streaming_run["windows"][1]["streaming"] = {"chunks": 24, "streaming": {"steps": 40}}
    path = tmp_path / "streaming_s0.json"
    path.write_text(json.dumps({"command": "python -m benchmarks.continual --policies frozen,streaming",
                                "streams": [streaming_run]}))  # fmt: skip
    merge_streams(ours, [str(path)])
    (stream,) = ours["streams"]
    assert [window["metrics"]["streaming"]["window_ndcg_10"] for window in stream["windows"]] == [0.11, 0.09, 0.08]
    assert [window["metrics"]["frozen"]["window_ndcg_10"] for window in stream["windows"]] == [0.1, 0.05, 0.04]
    assert stream["windows"][1]["streaming"]["streaming"]["steps"] == 40 and stream["train_s"]["streaming"] == 7.0
    (merged,) = stream["merged_policies"]
    assert merged["policies"] == ["streaming"] and merged["frozen_check"]["max_abs_difference"] == pytest.approx(0.001)
    assert ours["earlier_runs"][0]["streams_taken"] == ["churn x1, seed 0: streaming"]
    assert "streaming" in summarise(ours["streams"])["1"]["windows"]

    other_events = _stream(0, {"frozen": [0.1, 0.05, 0.04], "streaming": [0.1, 0.1, 0.1]}, {}, events=99)
    path.write_text(json.dumps({"streams": [other_events]}))
    fresh = {"streams": [_stream(0, COMMITTED, {"loop": 1.0, "retrain": 2.0, "loop_gate": 0.5})]}
    with pytest.raises(SystemExit, match="not the same stream"):
        merge_streams(fresh, [str(path)])


def test_the_streaming_target_is_the_newest_window_beyond_one_std_above_the_loop() -> None:
    def streams(last: list[float]) -> list[dict[str, Any]]:
        found = []
        for seed, value in enumerate(last):
            ndcg = copy.deepcopy(COMMITTED)
            ndcg["loop"][-1] += 0.001 * seed
            ndcg["streaming"] = [0.1, 0.03, value]
            found.append(_stream(seed, ndcg, {"loop": 1.0, "retrain": 3.0, "loop_gate": 0.5, "streaming": 2.0}))
        return found

    winning = summarise(streams([0.08, 0.081, 0.082]))["1"]["targets"]["streaming"]
    assert winning["met"] and winning["window_ndcg_10"]["newest_window"]["beyond_one_std"]
    assert winning["window_ndcg_10"]["windows_beyond_one_std"] == [3]
    assert winning["window_ndcg_10"]["windows_below_loop"] == [2]
    overall = winning["window_ndcg_10"]["all_windows"]
    assert overall["streaming"]["mean"] == pytest.approx((0.1 + 0.03 + 0.081) / 3, abs=1e-5)
    assert not overall["beyond_one_std"]  # window 2 drags it below the loop over all windows
    assert winning["window_new_ndcg_10"]["newest_window"]["streaming"]["mean"] == pytest.approx(0.0405)

    close = summarise(streams([0.05, 0.052, 0.06]))["1"]["targets"]["streaming"]  # bands overlap
    assert not close["met"] and close["window_ndcg_10"]["newest_window"]["mean_above_loop_mean_plus_std"]


def test_a_policy_some_seeds_ran_is_summarised_over_those_seeds_and_compared_on_them() -> None:
    runs = []
    for seed in (0, 1, 2):
        ndcg = copy.deepcopy(COMMITTED)
        ndcg["loop"][-1] = 0.05 + 0.01 * seed  # seed 2's loop is the best
        if seed < 2:
            ndcg["streaming"] = [0.1, 0.09, 0.065]
        runs.append(_stream(seed, ndcg, {"loop": 1.0, "retrain": 3.0, "loop_gate": 0.5}))
    found = summarise(runs)["1"]
    assert found["seeds"] == [0, 1, 2] and found["seeds_by_policy"] == {"streaming": [0, 1]}
    assert found["windows"]["streaming"]["window_ndcg_10"][-1]["n"] == 2
    assert found["windows"]["loop"]["window_ndcg_10"][-1]["n"] == 3
    target = found["targets"]["streaming"]
    assert target["seeds"] == [0, 1]
    assert target["window_ndcg_10"]["newest_window"]["loop"]["mean"] == pytest.approx(0.055)  # seeds 0 and 1 only
    assert target["met"]  # 0.065 +- 0 against 0.055 +- 0.0071
    assert "loop" in found["targets"] and "streaming" not in found["train_s"]

"""The continual benchmark's arithmetic without services: the churn settings of its streams,
the summary over seeds, the targets it checks and the plot."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks.continual.run import POLICIES, merge_streams, plot, stream_config, summarise

ARGS = argparse.Namespace(users=50, items=200, events_per_day=100, warmup_days=7, windows=7)


def test_churn_multiplies_the_default_launch_rate() -> None:
    default = stream_config(ARGS, 1.0, 0, start_ms=0)
    assert default.initial_item_share == pytest.approx(1 - 14 / 56)  # 1/56 of the catalogue launches a day
    assert stream_config(ARGS, 2.0, 0, start_ms=0).initial_item_share == pytest.approx(1 - 2 * 14 / 56)
    assert stream_config(ARGS, 0.5, 0, start_ms=0).initial_item_share == pytest.approx(1 - 0.5 * 14 / 56)
    assert default.half_life_days > 0 and default.events == 100 * 14 and default.span_days == 14
    assert stream_config(ARGS, 0.0, 3, start_ms=0).static_catalogue  # no launches, no life cycle
    with pytest.raises(SystemExit, match="launches more than the catalogue"):
        stream_config(ARGS, 4.0, 0, start_ms=0)


def _stream(seed: int, ndcg: dict[str, list[float]], train_s: dict[str, float]) -> dict[str, Any]:
    windows = [
        {"metrics": {policy: {"window_ndcg_10": values[w]} for policy, values in ndcg.items()}}
        for w in range(len(ndcg["frozen"]))
    ]
    return {"churn": 1.0, "seed": seed, "windows": windows, "train_s": {**train_s, "loop_gate": 1.0}}


def test_summary_is_mean_and_std_over_seeds_and_checks_the_targets() -> None:
    frozen = [0.10, 0.08, 0.06, 0.05]
    streams = [
        _stream(
            seed,
            {
                "frozen": [value + 0.001 * seed for value in frozen],
                "loop": [0.10, 0.095, 0.08, 0.08 + 0.001 * seed],
                "loop_candidate": [0.10, 0.10, 0.09, 0.09],
                "retrain": [0.10, 0.10, 0.09, 0.09],
            },
            {"loop": 10.0 + seed, "retrain": 60.0},
        )
        for seed in (0, 1, 2)
    ]
    found = summarise(streams)["1"]
    assert found["seeds"] == [0, 1, 2]
    last = found["windows"]["loop"]["window_ndcg_10"][-1]
    assert last["mean"] == pytest.approx(0.081) and last["std"] == pytest.approx(0.001) and last["n"] == 3
    assert math.isnan(found["windows"]["frozen"]["window_new_ndcg_10"][0]["mean"])  # not in the records
    assert found["train_s"]["loop"]["mean"] == pytest.approx(11.0)
    targets = found["targets"]
    loop = targets["loop"]
    assert loop["beats_frozen_beyond_std_from_window_3"] and loop["windows_apart"] == [3, 4]
    assert loop["last_window_gain_over_frozen"] == pytest.approx(0.081 / 0.051 - 1, abs=1e-4)
    assert loop["share_of_retrain_ndcg"] == pytest.approx((0.095 + 0.08 + 0.081) / (0.10 + 0.09 + 0.09), abs=1e-4)
    assert targets["loop_train_seconds_share_of_retrain"] == pytest.approx(11 / 60, abs=1e-4)
    assert loop["met"] and targets["loop_candidate"]["met"]


def test_a_loop_no_better_than_frozen_misses_the_targets() -> None:
    same = [0.10, 0.08, 0.06, 0.05]
    streams = [_stream(seed, {policy: same for policy in POLICIES}, {"loop": 30.0, "retrain": 60.0}) for seed in (0, 1)]
    targets = summarise(streams)["1"]["targets"]
    assert not targets["loop"]["beats_frozen_beyond_std_from_window_3"] and targets["loop"]["windows_apart"] == []
    assert targets["loop"]["last_window_gain_over_frozen"] == 0 and not targets["loop"]["met"]


def test_plot_draws_one_panel_per_churn(tmp_path: Path) -> None:
    streams = [
        {**_stream(0, {policy: [0.1, 0.09, 0.08] for policy in POLICIES}, {"loop": 1.0, "retrain": 2.0}), "churn": c}
        for c in (0.0, 1.0)
    ]
    path = plot(summarise(streams), tmp_path / "continual.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_merge_takes_the_streams_a_result_lacks_and_refuses_two_runs_of_one(tmp_path: Path) -> None:
    windows = {policy: [0.1, 0.05] for policy in POLICIES}
    ours = {"streams": [_stream(0, windows, {"loop": 1.0, "retrain": 2.0})]}
    theirs = {
        "command": "python -m benchmarks.continual --seeds 2",
        "commit": "abc",
        "streams": [
            _stream(0, windows, {"loop": 1.0, "retrain": 2.0}),
            _stream(2, windows, {"loop": 3.0, "retrain": 4.0}),
        ],
    }
    path = tmp_path / "seed2.json"
    path.write_text(json.dumps(theirs))
    merge_streams(ours, [str(path)])
    assert [stream["seed"] for stream in ours["streams"]] == [0, 2]  # the shared stream once
    assert ours["earlier_runs"] == [
        {"command": theirs["command"], "commit": "abc", "merged_from": str(path), "streams_taken": ["churn x1, seed 2"]}
    ]
    assert summarise(ours["streams"])["1"]["seeds"] == [0, 2]

    theirs["streams"][0]["train_s"]["loop"] = 9.0  # another run of seed 0
    path.write_text(json.dumps(theirs))
    with pytest.raises(SystemExit, match="another run of the stream churn x1, seed 0"):
        merge_streams({"streams": [_stream(0, windows, {"loop": 1.0, "retrain": 2.0})]}, [str(path)])

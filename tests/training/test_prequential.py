"""Time-ordered evaluation: the Retriever's window metrics equal a brute-force scorer's on a
small case (items launching inside the window, items the model does not know, repeats), and
bad input gets a clear error or an explicit empty result."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from features.splits import IS_POSITIVE, FlatSequences
from ingestion.schema import ACTION_IDS
from training.common.config import EncoderConfig
from training.retrieval.model import RetrievalModel
from training.retrieval.prequential import (
    NoOverlapError,
    TimeWindow,
    evaluate_window,
    parse_duration_ms,
    parse_time_ms,
    window_rows,
)
from training.retrieval.retriever import Retriever

VOCAB = 40  # items in the vocabulary read
KNOWN = 28  # items the model knows (its vocabulary is older)
MAX_LEN = 5
T = 1_000_000
HOUR = 3_600_000
USERS = 30


def _stream(seed: int) -> tuple[np.ndarray, FlatSequences, np.ndarray]:
    """USERS users' sequences around T, item i first seen at ``first_seen[i]`` (some after T)."""
    rng = np.random.default_rng(seed)
    first_seen = np.zeros(VOCAB + 1, dtype=np.int64)
    first_seen[1:21] = np.sort(rng.integers(T - 10 * HOUR, T - HOUR, 20))  # half exist before T
    first_seen[21:] = T - HOUR + np.arange(VOCAB - 20) * HOUR // 5  # one every 12 min: 27 and later after T
    actions = [ACTION_IDS[a] for a in ("click", "view", "like", "impression", "skip", "purchase")]
    lengths, items, action_ids, timestamps = [], [], [], []
    for _user in range(USERS):
        count = int(rng.integers(1, 12))
        ts = np.sort(rng.integers(T - 8 * HOUR, T + 4 * HOUR, count))
        for t in ts:
            existing = np.flatnonzero(first_seen[1:] <= t) + 1
            items.append(int(rng.choice(existing)))
            action_ids.append(int(rng.choice(actions)))
            timestamps.append(int(t))
        lengths.append(count)
    flat = FlatSequences(
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        items=np.array(items, dtype=np.int64),
        action_ids=np.array(action_ids, dtype=np.int64),
        timestamps=np.array(timestamps, dtype=np.int64),
    )
    # first_seen is the first event of the item, as in the lake.
    for item in range(1, VOCAB + 1):
        seen = flat.timestamps[flat.items == item]
        if len(seen):
            first_seen[item] = min(first_seen[item], int(seen.min()))
    return np.array([f"u{u:02d}" for u in range(USERS)]), flat, first_seen


def _brute_force(
    model: RetrievalModel, flat: FlatSequences, first_seen: np.ndarray, window: TimeWindow, new_after: int | None = None
) -> dict[str, float]:
    """Every positive event of the window, scored one at a time over an explicit candidate list."""
    table = F.normalize(model.item_embedding.weight.detach(), dim=-1)
    ranks: dict[str, list[float]] = {"seen": [], "all": []}
    unknown = new = 0
    new_seen: list[float] = []
    for user in range(len(flat.offsets) - 1):
        begin, end = flat.offsets[user], flat.offsets[user + 1]
        for position in range(begin, end):
            ts = int(flat.timestamps[position])
            if not (window.start_ms < ts <= window.end_ms and IS_POSITIVE[flat.action_ids[position]]):
                continue
            if position == begin:
                continue  # no history
            start = max(begin, position - MAX_LEN)
            history = [int(i) if i <= KNOWN else 0 for i in flat.items[start:position]]
            with torch.no_grad():
                hidden = model(
                    torch.tensor([history]),
                    torch.from_numpy(flat.action_ids[start:position]).unsqueeze(0),
                    torch.from_numpy(flat.timestamps[start:position]).unsqueeze(0),
                    torch.tensor([len(history)]),
                )[0, -1]
            scores = (table @ F.normalize(hidden, dim=-1)).tolist()
            target = int(flat.items[position])
            is_new = first_seen[target] > (window.start_ms if new_after is None else new_after)
            new += is_new
            if target > KNOWN:
                unknown += 1
                ranks["seen"].append(math.inf)
                ranks["all"].append(math.inf)
                new_seen.append(math.inf) if is_new else None
                continue
            candidates = [i for i in range(1, KNOWN + 1) if first_seen[i] <= ts and i != target]
            ahead = [i for i in candidates if (scores[i], -i) > (scores[target], -target)]
            seen = set(int(i) for i in flat.items[start:position])
            ranks["all"].append(float(len(ahead)))
            rank_seen = math.inf if target in seen else float(len([i for i in ahead if i not in seen]))
            ranks["seen"].append(rank_seen)
            if is_new:
                new_seen.append(rank_seen)

    def ndcg(values: list[float], k: int) -> float:
        return sum(1 / math.log2(r + 2) for r in values if r < k) / len(values)

    out = {"window_targets": float(len(ranks["seen"])), "window_unknown_target_share": unknown / len(ranks["seen"])}
    out["window_new_target_share"] = float(new) / len(ranks["seen"])
    for name, values in (("window", ranks["seen"]), ("window_all", ranks["all"])):
        for k in (10, 50):
            out[f"{name}_hr_{k}"] = sum(r < k for r in values) / len(values)
            out[f"{name}_ndcg_{k}"] = ndcg(values, k)
        out[f"{name}_mrr"] = sum(1 / (r + 1) for r in values) / len(values)
    if new_seen:
        out["window_new_ndcg_10"] = ndcg(new_seen, 10)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_window_metrics_equal_a_brute_force_scorer(seed: int) -> None:
    torch.manual_seed(seed)
    model = RetrievalModel(EncoderConfig(kind="sasrec", dim=8, max_len=MAX_LEN, dropout=0.0), KNOWN).eval()
    user_ids, flat, first_seen = _stream(seed)
    window = TimeWindow(T, 3 * HOUR)
    rows = window_rows(user_ids, flat, window, MAX_LEN, VOCAB)
    result = evaluate_window(Retriever(model.encoder, model.item_embedding.weight), rows, first_seen, window)
    expected = _brute_force(model, flat, first_seen, window)
    assert result.targets == expected["window_targets"] > 5
    # The case covers unknown targets, and candidates the existence mask removes.
    assert 0 < expected["window_unknown_target_share"] < 1
    assert any(first_seen[i] > T for i in range(1, KNOWN + 1))
    for key, value in expected.items():
        assert result.metrics[key] == pytest.approx(value, abs=1e-6), key
    # "New" from an earlier time (e.g. the data end of the model a candidate is compared with).
    earlier = T - HOUR
    result = evaluate_window(
        Retriever(model.encoder, model.item_embedding.weight), rows, first_seen, window, new_after_ms=earlier
    )
    expected = _brute_force(model, flat, first_seen, window, new_after=earlier)
    assert (
        expected["window_new_target_share"] >= _brute_force(model, flat, first_seen, window)["window_new_target_share"]
    )
    for key, value in expected.items():
        assert result.metrics[key] == pytest.approx(value, abs=1e-6), key


def test_bad_windows_are_refused_or_empty() -> None:
    torch.manual_seed(0)
    model = RetrievalModel(EncoderConfig(kind="sasrec", dim=8, max_len=MAX_LEN, dropout=0.0), KNOWN).eval()
    retriever = Retriever(model.encoder, model.item_embedding.weight)
    user_ids, flat, first_seen = _stream(0)
    with pytest.raises(ValueError, match="longer than 0"):
        TimeWindow(T, 0)
    with pytest.raises(ValueError, match="before the first event"):
        window_rows(user_ids, flat, TimeWindow(int(flat.timestamps.min()) - 1, HOUR), MAX_LEN, VOCAB)
    late = TimeWindow(int(flat.timestamps.max()), HOUR)  # nothing after the last event
    empty = evaluate_window(retriever, window_rows(user_ids, flat, late, MAX_LEN, VOCAB), first_seen, late)
    assert empty.empty and empty.metrics == {} and "no positive event" in empty.describe()
    stranger = RetrievalModel(EncoderConfig(kind="sasrec", dim=8, max_len=MAX_LEN, dropout=0.0), 0).eval()
    window = TimeWindow(T, 3 * HOUR)
    with pytest.raises(NoOverlapError, match="none of the"):
        evaluate_window(
            Retriever(stranger.encoder, stranger.item_embedding.weight),
            window_rows(user_ids, flat, window, MAX_LEN, VOCAB),
            first_seen,
            window,
        )


def test_durations_and_times_parse_or_say_why() -> None:
    assert [parse_duration_ms(text) for text in ("1h", "90m", "2d", "10s", "250ms", "500")] == [
        3_600_000,
        5_400_000,
        172_800_000,
        10_000,
        250,
        500,
    ]
    assert parse_time_ms("1700000000000") == parse_time_ms("2023-11-14T22:13:20") == 1_700_000_000_000
    assert parse_time_ms("2023-11-14T23:13:20+01:00") == 1_700_000_000_000
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_ms("soon")
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_time_ms("yesterday")

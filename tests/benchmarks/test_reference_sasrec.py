"""The reference SASRec harness without RecBole: the conversion to RecBole's atomic files with
streamrec's leave-last-out split, the history mask of the driver and RecBole's settings."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.reference.atomic import HEADER, read_sequences, split_rows, write_atomic
from benchmarks.reference.recbole_driver import mask_history
from benchmarks.reference.sasrec_recbole import merge, sasrec_config

# a: 5 events; b: 2 (train-only, fewer than 3); c: 3 with a repeat; d: 1 (train-only, no target).
# Lines of different users interleave, as in a file ordered by time.
LINES = ["a 1", "b 7", "a 2", "c 9", "a 3", "d 6", "c 9", "a 4", "b 8", "c 10", "a 5"]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "toy.txt"
    path.write_text("\n".join(LINES) + "\n")
    return path


def pairs(rows: dict, split: str) -> list[tuple[str, list[int], int]]:
    part = rows[split]
    return [
        (user, history.tolist(), int(target))
        for user, history, target in zip(part.users, part.histories, part.targets, strict=True)
    ]


def test_sequences_keep_each_users_order(dataset: Path) -> None:
    sequences = read_sequences(dataset)
    flat = sequences.flat
    assert sequences.users == ["a", "b", "c", "d"]
    assert flat.offsets.tolist() == [0, 5, 7, 10, 11]
    assert flat.items.tolist() == [1, 2, 3, 4, 5, 7, 8, 9, 9, 10, 6]
    assert flat.timestamps.tolist() == [0, 1, 2, 3, 4, 0, 1, 0, 1, 2, 0]


def test_leave_last_out_matches_streamrec(dataset: Path) -> None:
    rows = split_rows(read_sequences(dataset), max_len=50, train_window="full")
    assert pairs(rows, "test") == [("a", [1, 2, 3, 4], 5), ("c", [9, 9], 10)]
    assert pairs(rows, "validation") == [("a", [1, 2, 3], 4), ("c", [9], 9)]
    # Every event of a train sequence after the first is a target (RecBole's augmentation);
    # a's and c's train sequences stop before their validation target, b trains on all of it.
    assert pairs(rows, "train") == [("a", [1], 2), ("a", [1, 2], 3), ("b", [7], 8)]


def test_histories_are_the_last_max_len_events(dataset: Path) -> None:
    rows = split_rows(read_sequences(dataset), max_len=2, train_window="full")
    assert pairs(rows, "test") == [("a", [3, 4], 5), ("c", [9, 9], 10)]
    assert pairs(rows, "validation") == [("a", [2, 3], 4), ("c", [9], 9)]
    assert pairs(rows, "train") == [("a", [1], 2), ("a", [1, 2], 3), ("b", [7], 8)]
    rows = split_rows(read_sequences(dataset), max_len=1, train_window="full")
    assert pairs(rows, "train") == [("a", [1], 2), ("a", [2], 3), ("b", [7], 8)]


def test_train_window_is_streamrecs_train_row(dataset: Path) -> None:
    """streamrec trains on the last max_len events of the train sequence: a's is [2, 3] at
    max_len 2, so 2 is never a target and 3 is seen after 2 alone."""
    assert pairs(split_rows(read_sequences(dataset), max_len=50), "train") == [
        ("a", [1], 2),
        ("a", [1, 2], 3),
        ("b", [7], 8),
    ]
    rows = split_rows(read_sequences(dataset), max_len=2)
    assert pairs(rows, "train") == [("a", [2], 3), ("b", [7], 8)]
    assert pairs(rows, "test") == [("a", [3, 4], 5), ("c", [9, 9], 10)]


def test_atomic_files(dataset: Path, tmp_path: Path) -> None:
    counts = write_atomic(split_rows(read_sequences(dataset), max_len=50), tmp_path, "toy")
    assert counts == {"train": 3, "validation": 2, "test": 2}
    test = (tmp_path / "toy" / "toy.test.inter").read_text()
    assert test == HEADER + "a\t1 2 3 4\t5\nc\t9 9\t10\n"
    assert (tmp_path / "toy" / "toy.valid.inter").read_text().splitlines()[1:] == ["a\t1 2 3\t4", "c\t9\t9"]
    assert (tmp_path / "toy" / "toy.train.inter").read_text().splitlines()[1:] == ["a\t1\t2", "a\t1 2\t3", "b\t7\t8"]


def test_mask_history_removes_the_rows_items_and_padding() -> None:
    scores = torch.arange(12, dtype=torch.float32).reshape(2, 6)
    history = torch.tensor([[1, 1, 3, 0], [5, 0, 0, 0]])
    masked = mask_history(scores.clone(), history)
    inf = float("-inf")
    assert masked.tolist() == [[inf, inf, 2.0, inf, 4.0, 5.0], [inf, 7.0, 8.0, 9.0, 10.0, inf]]


def test_config_stops_as_streamrec_does() -> None:
    args = argparse.Namespace(dim=50, dropout=0.2, max_len=50, lr=1e-3, batch_size=128, epochs=20, patience=5)
    config = sasrec_config(args, Path("/tmp/x"))
    # RecBole stops once more than stopping_step epochs passed without a better one; streamrec
    # once patience epochs did.
    assert config["stopping_step"] == 4
    assert config["loss_type"] == "CE" and config["train_neg_sample_args"] is None
    assert (config["hidden_size"], config["inner_size"], config["n_layers"], config["n_heads"]) == (50, 50, 2, 1)
    assert config["alias_of_item_id"] == ["item_id_list"]  # one id mapping for histories and targets
    assert np.isclose(config["hidden_dropout_prob"], 0.2) and config["MAX_ITEM_LIST_LENGTH"] == 50


def result(seeds: list[int], lr: float = 1e-3) -> dict:
    runs = [
        {"seed": s, "test_ndcg_10": 0.02 + s / 1000, "test_hr_10": 0.04, "test_all_ndcg_10": 0.79,
         "test_all_hr_10": 0.85, "wall_seconds": 100.0 + s, "fit_seconds": 90.0}
        for s in seeds
    ]  # fmt: skip
    return {"command": "c", "when": "w", "commit": "x", "arguments": {"seeds": seeds, "lr": lr, "out": None},
            "config": {"learning_rate": lr}, "seeds": seeds, "runs": runs, "complete": False}  # fmt: skip


def test_merge_joins_seeds_of_one_setting() -> None:
    merged = merge([result([1, 2]), result([0])], note="seeds 1-2 under contention")
    assert [run["seed"] for run in merged["runs"]] == [0, 1, 2] and merged["seeds"] == [0, 1, 2]
    assert merged["summary"]["test_ndcg_10"] == {"mean": 0.021, "std": 0.001}
    assert [source["seeds"] for source in merged["merged_from"]] == [[1, 2], [0]]
    assert merged["complete"] and merged["note"] == "seeds 1-2 under contention"
    with pytest.raises(ValueError, match="twice"):
        merge([result([0, 1]), result([1])], note=None)
    with pytest.raises(ValueError, match="different settings"):
        merge([result([0]), result([1], lr=3e-3)], note=None)

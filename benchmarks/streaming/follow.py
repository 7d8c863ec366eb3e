"""The follow job's throughput: silver/events rows learned per second, on this machine.

A drifting synthetic stream (half the items exist at the start, the rest launch over the span)
is cut by time: the first ``--base-share`` becomes silver version 0 and the feature tables (the
incremental build's Arrow transforms, no Spark), a random model with the default TrainConfig
(HSTU, dim 50, max_len 200, batch 128) is its base, and the rest arrives as silver versions of
``--round-events`` rows each. For each version the job's ``round`` (silver diff, vocabulary
append, histories, at most ``train.follow_max_steps`` steps on the touched users plus as many
replayed ones) and ``publish`` (a delta with the changed rows and the encoder) are timed.
Events/s = rows consumed / (round + publish seconds): what the job sustains flat out, one
round per version. Default settings otherwise (headroom 10,000, replay 1.0, 50 steps).

    .venv/bin/python -m benchmarks.streaming.follow [--seeds 0 1 2] [--round-events 250 1000] [--rounds 4]
        [--users 2000 --items 5000 --events 60000]

Writes benchmarks/results/follow.json (``--out``) and prints its path.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import torch
from deltalake import DeltaTable, write_deltalake

from benchmarks.harness import RESULTS, header, loads, log, write_result
from features import arrow_jobs
from features.reader import latest_versions
from features.tables import (
    ITEM_STATS_SCHEMA,
    ITEM_STATS_TABLE,
    ITEM_VOCAB_SCHEMA,
    ITEM_VOCAB_TABLE,
    USER_SEQUENCES_TABLE,
    build_record,
)
from infra.settings import Settings, get_settings
from ingestion.lake_writer import append_silver, silver_rows_of
from ingestion.schema import SILVER_TABLE
from ingestion.synthetic import SyntheticConfig, generate_events
from training.retrieval.config import TrainConfig
from training.retrieval.io import ModelInfo
from training.retrieval.model import RetrievalModel
from training.streaming.follow import FollowBase, FollowJob, FollowOptions

RESULT = RESULTS / "follow.json"
START_MS = 1_700_000_000_000


def append(settings: Settings, events: list[dict[str, Any]], first_offset: int) -> None:
    uri = settings.table_uri(SILVER_TABLE)
    append_silver(uri, silver_rows_of(events, first_offset))


def first_build(settings: Settings) -> None:
    """The feature tables of silver version 0 from the incremental build's Arrow transforms."""
    table = DeltaTable(settings.table_uri(SILVER_TABLE)).to_pyarrow_table()
    vocab = arrow_jobs.new_items(table, ITEM_VOCAB_SCHEMA.empty_table())
    record = build_record(0, settings.features.max_len)
    indexed = arrow_jobs.with_item_index(table, vocab)
    stats = arrow_jobs.add_stats(ITEM_STATS_SCHEMA.empty_table(), arrow_jobs.stats_of_events(table), vocab)
    for name, rows in (
        (ITEM_VOCAB_TABLE, vocab),
        (USER_SEQUENCES_TABLE, arrow_jobs.sequences_from_events(indexed, settings.features.max_len)),
        (ITEM_STATS_TABLE, stats),
    ):
        write_deltalake(settings.table_uri(name), rows, mode="append", commit_properties=record)


def random_base(settings: Settings, config: TrainConfig, seed: int) -> FollowBase:
    versions = latest_versions(settings)
    vocab = DeltaTable(settings.table_uri(ITEM_VOCAB_TABLE)).to_pyarrow_table(columns=["item_index"])
    num_items = int(pc.max(vocab.column("item_index")).as_py())
    torch.manual_seed(seed)
    model = RetrievalModel(config.encoder, num_items)
    info = ModelInfo(encoder=config.encoder, num_items=num_items, feature_versions=versions.as_dict())
    return FollowBase(1, info, dict(model.state_dict()))


def run_seed(seed: int, round_events: int, rounds: int, args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    """One stream, one base, ``rounds`` timed rounds of ``round_events`` rows each."""
    stream = SyntheticConfig(users=args.users, items=args.items, events=args.events, seed=seed, start_ms=START_MS,
                             initial_item_share=0.5)  # fmt: skip
    base_share = args.base_share
    events = list(generate_events(stream))
    cut = int(len(events) * base_share)
    settings = get_settings(home=directory / f"seed{seed}-{round_events}")
    append(settings, events[:cut], 0)
    first_build(settings)
    config = TrainConfig(seed=seed)
    base = random_base(settings, config, seed)
    job = FollowJob(settings, base, config, FollowOptions.from_settings(settings), log=lambda line: None)
    measured = []
    for number in range(rounds):
        start = cut + number * round_events
        append(settings, events[start : start + round_events], start)
        steps_before, examples_before, new_before = job.stats.steps, job.stats.examples, job.model.known_items
        began = time.perf_counter()
        consumed = job.round()
        learned = time.perf_counter()
        delta = job.publish()
        done = time.perf_counter()
        assert delta is not None
        measured.append(
            {
                "events": consumed,
                "steps": job.stats.steps - steps_before,
                "examples": job.stats.examples - examples_before,
                "new_items": job.model.known_items - new_before,
                "delta_rows": int(delta.item_indices.size),
                "round_s": round(learned - began, 3),
                "publish_s": round(done - learned, 3),
                "events_per_s": round(consumed / (done - began), 1),
            }
        )
        log(f"seed {seed}, {round_events} events/round, round {number + 1}: {measured[-1]}")
    return {"seed": seed, "base_events": cut, "base_items": base.info.num_items, "rounds": measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--round-events", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--base-share", type=float, default=0.8)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    torch.set_num_threads(2)
    load_before = loads()
    sizes: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="streamrec-bench-follow-") as directory:
        for round_events in args.round_events:
            runs = [run_seed(seed, round_events, args.rounds, args, Path(directory)) for seed in args.seeds]
            per_seed = [statistics.median(r["events_per_s"] for r in run["rounds"]) for run in runs]
            sizes[str(round_events)] = {
                "events_per_s_median_per_seed": per_seed,
                "events_per_s_median": statistics.median(per_seed),
                "events_per_s_min_max": [min(per_seed), max(per_seed)],
                "runs": runs,
            }
    result = {
        **header("follow", args, args.seeds),
        "load_before_after": [load_before, loads()],
        "config": "TrainConfig() defaults (HSTU dim 50, 2 blocks, max_len 200, batch 128); train.follow_* defaults",
        "stream": f"SyntheticConfig(users={args.users}, items={args.items}, events={args.events}, "
        "initial_item_share=0.5)",
        "round_events": sizes,
    }
    print(write_result(args.out, result))


if __name__ == "__main__":
    main()

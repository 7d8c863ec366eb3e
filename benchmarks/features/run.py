"""Features benchmark: full build rows/s on 1M silver events, incremental update of 1% new events
as a ratio of the full build time (target <= 0.2), and the training reader against a plain read.

Synthetic silver (20k users, 50k items, Zipf popularity) is written directly with deltalake into
a temporary lake. Measured in one run:
  1. full build (Spark) of the 1M events in a started Spark session (the session start is
     reported apart; the first build also warms the JVM up);
  2. incremental build of 1% new events (mostly later events of known users, some new users and
     items, 1% of them late);
  3. a full rebuild over the same 1.01M events in the warm JVM, checked equal to (2).
  The headline ratio is (2) over the faster of (1) and (3), the conservative choice;
  4. load_examples("train") against reading the user_sequences table into Arrow (its I/O floor),
     on the built tables and on 100k users x 200 events written directly.

    .venv/bin/python -m benchmarks.features [--events 1000000] [--out PATH]

Writes benchmarks/results/features.json (``--out``) and prints its path.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

from benchmarks.harness import RESULTS, header, private_home, private_settings, write_result
from features.build import build
from features.reader import load_examples
from features.tables import (
    ITEM_STATS_TABLE,
    ITEM_VOCAB_SCHEMA,
    ITEM_VOCAB_TABLE,
    USER_SEQUENCES_SCHEMA,
    USER_SEQUENCES_TABLE,
)
from infra.settings import Settings, get_settings
from ingestion.lake_writer import append_silver, as_silver
from ingestion.schema import ACTIONS, SILVER_TABLE

RESULT = RESULTS / "features.json"
ACTION_SHARES = {
    "impression": 0.45,
    "click": 0.2,
    "view": 0.15,
    "like": 0.06,
    "share": 0.02,
    "purchase": 0.02,
    "skip": 0.07,
    "dislike": 0.03,
}
DAY_MS = 86_400_000
START_MS = 1_700_000_000_000
PARTITIONS = 4


def zipf_choice(rng: np.random.Generator, n: int, exponent: float, size: int, offset: int = 0) -> np.ndarray:
    """``size`` draws from ranks offset..offset+n-1 with probability ~ 1 / rank**exponent."""
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return rng.choice(n, size=size, p=weights / weights.sum()) + offset


def silver_batch(
    rng: np.random.Generator, users: np.ndarray, items: np.ndarray, ts: np.ndarray, first_id: int
) -> pa.Table:
    """Silver rows (SILVER_SCHEMA) for the given user/item numbers and timestamps."""
    count = len(users)
    actions = rng.choice(np.array(ACTIONS), size=count, p=[ACTION_SHARES[action] for action in ACTIONS])
    partitions = (users % PARTITIONS).astype(np.int32)
    order = np.argsort(ts, kind="stable")  # Kafka offsets follow arrival (ts) order per partition
    offsets = np.empty(count, dtype=np.int64)
    for partition in range(PARTITIONS):
        rows = order[partitions[order] == partition]
        offsets[rows] = first_id + np.arange(len(rows))
    table = pa.table(
        {
            "event_id": pa.array(np.char.add("e", np.arange(first_id, first_id + count).astype(str))),
            "user_id": pa.array(np.char.add("u", users.astype(str))),
            "item_id": pa.array(np.char.add("i", items.astype(str))),
            "action": pa.array(actions),
            "ts": pa.array(ts),
            "dwell_ms": pa.nulls(count, pa.int64()),
            "surface": pa.nulls(count, pa.string()),
            "kafka_partition": pa.array(partitions),
            "kafka_offset": pa.array(offsets),
            "ingested_at": pa.array(np.full(count, START_MS * 1000, dtype=np.int64), pa.timestamp("us", tz="UTC")),
            "event_date": pc.cast(pa.array(ts // DAY_MS, pa.int32()), pa.date32()),
        }
    )
    return as_silver(table)


def timed(function, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def best_of(repeats: int, function, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
    """The result and the fastest of ``repeats`` timings (reads are cheap enough to repeat)."""
    runs = [timed(function, *args, **kwargs) for _ in range(repeats)]
    return runs[-1][0], min(seconds for _, seconds in runs)


def table_snapshot(settings: Settings, name: str, key: str) -> pa.Table:
    return DeltaTable(settings.table_uri(name)).to_pyarrow_table().sort_by(key)


def reader_at_scale(home: Path, users: int, length: int, rng: np.random.Generator) -> dict[str, float]:
    """load_examples over ``users`` full-length sequences written directly, against a plain read."""
    settings = get_settings(home=home, lake_uri="", features_max_len=length)
    count = users * length
    offsets = pa.array(np.arange(0, count + 1, length, dtype=np.int32))
    codes = rng.choice(len(ACTIONS), size=count, p=[ACTION_SHARES[action] for action in ACTIONS])
    actions = pa.array(ACTIONS).take(pa.array(codes))
    sequences = pa.table(
        {
            "user_id": pa.array(np.char.add("u", np.arange(users).astype(str))),
            "item_indices": pa.ListArray.from_arrays(offsets, pa.array(rng.integers(1, 50_001, count))),
            "actions": pa.ListArray.from_arrays(offsets, actions),
            "timestamps": pa.ListArray.from_arrays(offsets, pa.array(START_MS + np.arange(count, dtype=np.int64))),
        }
    ).cast(USER_SEQUENCES_SCHEMA)
    write_deltalake(settings.table_uri(USER_SEQUENCES_TABLE), sequences)
    indices = np.arange(1, 50_001)
    item_ids = pa.array(np.char.add("i", indices.astype(str)))
    vocab = pa.table(
        {"item_id": item_ids, "item_index": indices, "first_seen_ts": np.zeros(len(indices), dtype=np.int64)}
    )
    write_deltalake(settings.table_uri(ITEM_VOCAB_TABLE), vocab.cast(ITEM_VOCAB_SCHEMA))
    del sequences
    _, plain_read_s = best_of(3, lambda: DeltaTable(settings.table_uri(USER_SEQUENCES_TABLE)).to_pyarrow_table())
    examples, reader_s = best_of(3, load_examples, settings, "test")
    return {
        "users": users,
        "events_per_user": length,
        "test_examples": len(examples),
        "load_examples_test_s": round(reader_s, 3),
        "baseline_plain_arrow_read_s": round(plain_read_s, 3),
        "ratio_to_plain_read": round(reader_s / plain_read_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--new-fraction", type=float, default=0.01)
    parser.add_argument("--reader-users", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    quiet = lambda message: None  # noqa: E731
    result_header = header("features", args, seeds=[args.seed])

    with private_home("features") as home:
        settings = private_settings(home)
        silver = settings.table_uri(SILVER_TABLE)
        days = 30
        base = silver_batch(
            rng,
            zipf_choice(rng, args.users, 0.7, args.events),
            zipf_choice(rng, args.items, 1.0, args.events),
            START_MS + rng.integers(0, days * DAY_MS, args.events),
            first_id=0,
        )
        append_silver(silver, base)
        print(f"silver: {len(base):,} events written", flush=True)

        from infra.spark import spark_session

        spark, session_s = timed(spark_session, settings, "streamrec-features")
        _, full_s = timed(build, settings, log=quiet)
        print(f"full build: {full_s:.1f}s (+{session_s:.1f}s Spark session start)", flush=True)

        # 1% new events: a day later for known users, 5% from new users, 2% of new items,
        # and 1% late (inside the 30 days already built).
        new = int(args.events * args.new_fraction)
        users = zipf_choice(rng, args.users, 0.7, new)
        fresh_users = rng.random(new) < 0.05
        users[fresh_users] = args.users + rng.integers(0, max(1, new // 20), fresh_users.sum())
        items = zipf_choice(rng, args.items, 1.0, new)
        fresh_items = rng.random(new) < 0.02
        items[fresh_items] = args.items + rng.integers(0, max(1, new // 50), fresh_items.sum())
        ts = START_MS + days * DAY_MS + rng.integers(0, DAY_MS, new)
        late = rng.random(new) < 0.01
        ts[late] = START_MS + rng.integers(0, days * DAY_MS, late.sum())
        batch = silver_batch(rng, users, items, ts, first_id=args.events)
        append_silver(silver, batch)

        report, incremental_s = timed(build, settings, incremental=True, log=quiet)
        assert report.mode == "incremental", report.fallback_reason
        keys = {USER_SEQUENCES_TABLE: "user_id", ITEM_STATS_TABLE: "item_id"}
        incremental = {name: table_snapshot(settings, name, key) for name, key in keys.items()}
        print(f"incremental build of {new:,} events: {incremental_s:.2f}s", flush=True)

        _, rebuild_s = timed(build, settings, log=quiet)
        equal = all(incremental[name].equals(table_snapshot(settings, name, key)) for name, key in keys.items())
        print(f"full rebuild: {rebuild_s:.1f}s; incremental == full rebuild: {equal}", flush=True)

        _, plain_read_s = best_of(3, lambda: DeltaTable(settings.table_uri(USER_SEQUENCES_TABLE)).to_pyarrow_table())
        examples, reader_s = best_of(3, load_examples, settings, "train")
        sequences_rows = DeltaTable(settings.table_uri(USER_SEQUENCES_TABLE)).count()
        spark.stop()
        at_scale = reader_at_scale(home / "reader", args.reader_users, 200, rng)
        print(f"reader, {args.reader_users:,} users x 200 events: {at_scale['load_examples_test_s']:.2f}s", flush=True)

    ratio = incremental_s / min(full_s, rebuild_s)  # against the faster full build: conservative
    result = {
        **result_header,
        "data": {
            "events": args.events,
            "users": args.users,
            "items": args.items,
            "item_zipf": 1.0,
            "user_zipf": 0.7,
            "new_events": new,
            "late_share_of_new": 0.01,
            "max_len": settings.features.max_len,
        },
        "spark_session_start_s": round(session_s, 3),
        "full_build_first_s": round(full_s, 3),
        "full_build_first_rows_per_s": round(args.events / full_s),
        "full_rebuild_warm_s": round(rebuild_s, 3),
        "full_rebuild_warm_rows_per_s": round((args.events + new) / rebuild_s),
        "incremental_build_s": round(incremental_s, 3),
        "incremental_silver_rows": report.new_silver_rows,
        "ratio_incremental_to_full": round(ratio, 4),
        "ratio_incremental_to_first_full_with_session_start": round(incremental_s / (full_s + session_s), 4),
        "ratio_target": 0.2,
        "ratio_target_met": ratio <= 0.2,
        "incremental_equals_full_rebuild": equal,
        "reader": {
            "users": sequences_rows,
            "train_examples": len(examples),
            "load_examples_train_s": round(reader_s, 3),
            "baseline_plain_arrow_read_s": round(plain_read_s, 3),
            "ratio_to_plain_read": round(reader_s / plain_read_s, 2),
        },
        "reader_at_scale": at_scale,
    }
    write_result(args.out, result)
    print(json.dumps(result, indent=2))
    print(f"results: {args.out}")
    if not equal:
        sys.exit("incremental build differs from the full rebuild")


if __name__ == "__main__":
    main()

"""Model deltas table: publish and read times of one delta, against a bare Parquet write and read.

For 1k and 100k changed rows of width 64 (a delta every 30 s must fit well inside that), on a
local temporary table:
  - build: ``ModelDelta.build`` (conversion and the SHA-256 checksum);
  - publish: ``ModelDeltaTable.publish`` (checks, one Delta commit with its app transaction);
  - read: ``ModelDeltaTable.after`` from the previous delta (log refresh, file pruning, checksum
    and structure checks), by a reader that keeps its table object like a serving replica;
  - baseline: ``pyarrow.parquet`` writing and reading the same row as a plain file (the floor);
and, after ``--history`` earlier deltas of 1k rows, a reader's poll when nothing is new and the
read of the newest delta (the cost of a long-lived base).

    .venv/bin/python -m benchmarks.streaming.deltas [--repeats 5] [--history 200] [--out PATH]

Writes benchmarks/results/model_deltas.json (``--out``) and prints its path.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from benchmarks.harness import RESULTS, header, loads, log, write_result
from training.streaming.deltas import MODEL_DELTAS_TABLE, DeltaPosition, ModelDelta, ModelDeltaTable, _to_arrow

RESULT = RESULTS / "model_deltas.json"
MODEL = "streamrec-retrieval"
WIDTH = 64


def seconds(action: Callable[[], Any]) -> tuple[float, Any]:
    """How long ``action()`` took, and what it returned."""
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def summary(values: list[float]) -> dict[str, float]:
    """Median, min and max in milliseconds."""
    return {
        "median_ms": round(1000 * statistics.median(values), 2),
        "min_ms": round(1000 * min(values), 2),
        "max_ms": round(1000 * max(values), 2),
    }


def delta_rows(rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` distinct item indices and their random vectors."""
    return rng.choice(np.arange(1, 10 * rows + 1), size=rows, replace=False), rng.standard_normal(
        (rows, WIDTH), dtype=np.float32
    )


def delta_after(position: DeltaPosition, indices: np.ndarray, vectors: np.ndarray) -> ModelDelta:
    return ModelDelta.build(
        position,
        item_indices=indices,
        item_vectors=vectors,
        silver_version=position.sequence,
        kafka_offsets={0: 1000 * position.sequence},
    )


def measure_rows(rows: int, repeats: int, directory: Path, seed: int) -> dict[str, Any]:
    """Build, publish, read and the bare Parquet baseline for ``repeats`` deltas of ``rows`` rows."""
    rng = np.random.default_rng(seed)
    uri = str(directory / f"rows{rows}" / MODEL_DELTAS_TABLE)
    writer, reader = ModelDeltaTable(uri), ModelDeltaTable(uri)
    position = DeltaPosition(MODEL, 1)
    times: dict[str, list[float]] = {"build": [], "publish": [], "read": [], "parquet_write": [], "parquet_read": []}
    for repeat in range(repeats + 1):  # the first delta creates the table: not counted
        indices, vectors = delta_rows(rows, rng)
        build, delta = seconds(lambda: delta_after(position, indices, vectors))  # noqa: B023 (called at once)
        publish, _ = seconds(lambda: writer.publish(delta))  # noqa: B023
        read, got = seconds(lambda: list(reader.after(position, width=WIDTH)))  # noqa: B023
        assert [d.sequence for d in got] == [delta.sequence]
        plain, row = directory / f"plain-{rows}-{repeat}.parquet", _to_arrow(delta)
        parquet_write, _ = seconds(lambda: pq.write_table(row, plain, compression="NONE"))  # noqa: B023
        parquet_read, _ = seconds(lambda: pq.read_table(plain))  # noqa: B023
        if repeat:
            for name, value in zip(times, (build, publish, read, parquet_write, parquet_read), strict=True):
                times[name].append(value)
        position = delta.position
    result: dict[str, Any] = {name: summary(values) for name, values in times.items()}
    result["payload_mb"] = round(rows * WIDTH * 4 / 2**20, 2)
    result["publish_over_parquet_write"] = round(
        statistics.median(times["publish"]) / statistics.median(times["parquet_write"]), 2
    )
    result["read_over_parquet_read"] = round(
        statistics.median(times["read"]) / statistics.median(times["parquet_read"]), 2
    )
    log(f"{rows} rows: publish {result['publish']['median_ms']} ms, read {result['read']['median_ms']} ms")
    return result


def measure_history(history: int, repeats: int, directory: Path, seed: int) -> dict[str, Any]:
    """A reader's poll with nothing new and its read of the newest delta after ``history`` deltas."""
    rng = np.random.default_rng(seed)
    uri = str(directory / "history" / MODEL_DELTAS_TABLE)
    writer, reader = ModelDeltaTable(uri), ModelDeltaTable(uri)
    position = DeltaPosition(MODEL, 1)
    publish = []
    for _ in range(history):
        delta = delta_after(position, *delta_rows(1000, rng))
        publish.append(seconds(lambda: writer.publish(delta))[0])  # noqa: B023 (called at once)
        position = delta.position
    previous = writer.last(MODEL, 1)
    list(reader.after(previous, width=WIDTH))  # the reader's table object is warm
    polls = [seconds(lambda: list(reader.after(previous, width=WIDTH)))[0] for _ in range(repeats)]
    newest = []
    for _ in range(repeats):
        delta = delta_after(position, *delta_rows(1000, rng))
        writer.publish(delta)
        newest.append(seconds(lambda: list(reader.after(position, width=WIDTH)))[0])  # noqa: B023
        position = delta.position
    log(f"after {history} deltas: poll {summary(polls)['median_ms']} ms, newest {summary(newest)['median_ms']} ms")
    return {
        "earlier_deltas": history,
        "publish_1k_rows_over_the_history": summary(publish),
        "last_100_publishes_1k_rows": summary(publish[-100:]),
        "poll_nothing_new": summary(polls),
        "read_newest_1k_rows": summary(newest),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--history", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    load_before = loads()
    with tempfile.TemporaryDirectory(prefix="streamrec-bench-deltas-") as directory:
        rows = {str(n): measure_rows(n, args.repeats, Path(directory), args.seed) for n in (1000, 100_000)}
        history = measure_history(args.history, args.repeats, Path(directory), args.seed)
    result = {
        **header("model_deltas", args, [args.seed]),
        "load_before_after": [load_before, loads()],
        "width": WIDTH,
        "rows": rows,
        "history": history,
    }
    print(write_result(args.out, result))


if __name__ == "__main__":
    main()

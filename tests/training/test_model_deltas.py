"""The Delta table of model deltas (training.streaming.deltas): publish, read, validate, drop,
and what happens when writers race or die. Fast tier: a temporary directory is the lake."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from training.streaming import deltas as module
from training.streaming.deltas import (
    MODEL_DELTAS_TABLE,
    PARTITION_COLUMNS,
    BrokenChain,
    ChecksumMismatch,
    DeltaPosition,
    DuplicateItems,
    MalformedDelta,
    ModelDelta,
    ModelDeltaTable,
    SequenceConflict,
    SequenceGap,
    StalePosition,
    UnreadableDelta,
    WidthMismatch,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL = "streamrec-retrieval"


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return str(tmp_path / "lake" / MODEL_DELTAS_TABLE)


def make(after: DeltaPosition, rows: int = 6, width: int = 8, seed: int = 0, **fields: Any) -> ModelDelta:
    """A delta after ``after`` with ``rows`` random rows (indices from 1 + seed)."""
    rng = np.random.default_rng(seed)
    values: dict[str, Any] = {
        "item_indices": np.arange(1, rows + 1) + seed,
        "item_vectors": rng.standard_normal((rows, width)),
        "silver_version": 10 + after.sequence,
        "kafka_offsets": {0: 100 + after.sequence, 1: 7},
    }
    return ModelDelta.build(after, **{**values, **fields})


def publish_chain(
    table: ModelDeltaTable, count: int, base: int = 1, model: str = MODEL, **fields: Any
) -> list[ModelDelta]:
    """Publish ``count`` deltas after the base's last one; returns them."""
    published = []
    position = table.last(model, base)
    for seed in range(count):
        delta = make(position, seed=seed, **fields)
        table.publish(delta)
        published.append(delta)
        position = delta.position
    return published


def read(uri: str, after: DeltaPosition, width: int = 8, **options: Any) -> list[ModelDelta]:
    return list(ModelDeltaTable(uri).after(after, width=width, **options))


def same(a: ModelDelta, b: ModelDelta) -> bool:
    return (
        a.position == b.position
        and np.array_equal(a.item_indices, b.item_indices)
        and np.array_equal(a.item_vectors, b.item_vectors)
        and (a.dense_weights, dict(a.new_items), a.silver_version, dict(a.kafka_offsets), a.published_ms)
        == (b.dense_weights, dict(b.new_items), b.silver_version, dict(b.kafka_offsets), b.published_ms)
        and a.previous_checksum == b.previous_checksum
    )


def data_file(uri: str, sequence: int, base: int = 1) -> Path:
    """The parquet file holding delta ``sequence`` of ``base``."""
    actions = pa.table(DeltaTable(uri).get_add_actions(flatten=True)).to_pylist()
    (path,) = [
        a["path"]
        for a in actions
        if a["partition.base_version"] == base and a["min.sequence"] == sequence == a["max.sequence"]
    ]
    return Path(uri) / path


def forge(uri: str, delta: ModelDelta, **columns: Any) -> None:
    """Commit ``delta``'s row with ``columns`` replaced, bypassing ``publish``'s checks, the way a
    faulty writer (or a person) could; its checksum is recomputed over the forged content."""
    row = module._to_arrow(delta)
    for name, value in columns.items():
        row = row.set_column(row.schema.get_field_index(name), name, pa.array([value], row.schema.field(name).type))
    indices = np.asarray(row.column("item_indices")[0].as_py(), dtype=np.int64)
    checksum = module._checksum(
        delta.model, delta.base_version, delta.sequence, int(row.column("width")[0].as_py()), indices,
        np.frombuffer(row.column("item_vectors")[0].as_py(), np.uint8), delta.dense_weights, delta.new_items,
        delta.silver_version, delta.kafka_offsets, delta.published_ms, delta.previous_checksum,
    )  # fmt: skip
    row = row.set_column(row.schema.get_field_index("checksum"), "checksum", pa.array([checksum], pa.string()))
    txn = Transaction(module._app_id(delta.model, delta.base_version), delta.sequence)
    write_deltalake(
        uri,
        row,
        mode="append",
        partition_by=PARTITION_COLUMNS,
        commit_properties=CommitProperties(app_transactions=[txn]),
    )


# Round trips --------------------------------------------------------------------------------
def test_round_trip_of_several_deltas(uri: str) -> None:
    table = ModelDeltaTable(uri)
    assert not DeltaTable.is_deltatable(uri)
    assert table.last(MODEL, 3) == DeltaPosition(MODEL, 3)
    first = make(DeltaPosition(MODEL, 3), new_items={"new-a": 2, "new-b": 5})
    dense_only = make(first.position, rows=0, dense_weights=b"\x00\x01 encoder state", seed=1)
    third = make(dense_only.position, rows=300, seed=2, kafka_offsets={2: 9, 0: 4})
    versions = [table.publish(delta) for delta in (first, dense_only, third)]
    assert versions == sorted(versions) and DeltaTable.is_deltatable(uri)

    got = read(uri, DeltaPosition(MODEL, 3))
    assert [d.sequence for d in got] == [1, 2, 3]
    assert all(same(a, b) for a, b in zip(got, (first, dense_only, third), strict=True))
    assert got[1].item_vectors.shape == (0, 8) and got[1].dense_weights == b"\x00\x01 encoder state"
    assert got[0].new_items == {"new-a": 2, "new-b": 5} and got[2].kafka_offsets == {0: 4, 2: 9}
    assert got[2].item_vectors.dtype == np.float32 and got[2].item_indices.dtype == np.int64
    assert table.last(MODEL, 3) == third.position
    # another base and another model are their own sequences
    assert read(uri, DeltaPosition(MODEL, 4)) == [] and read(uri, DeltaPosition("streamrec-ranking", 3)) == []


def test_reader_after_k_sees_only_later_deltas_and_opens_no_older_payload(uri: str) -> None:
    published = publish_chain(ModelDeltaTable(uri), 5)
    got = read(uri, published[1].position)
    assert [d.sequence for d in got] == [3, 4, 5]
    assert [d.sequence for d in read(uri, published[1].position, limit=2)] == [3, 4]
    assert read(uri, published[-1].position) == []
    # delta 1's file destroyed: a reader after it never touches it, one from the base fails on it
    data_file(uri, 1).write_bytes(b"not parquet")
    assert [d.sequence for d in read(uri, published[0].position)] == [2, 3, 4, 5]
    with pytest.raises(UnreadableDelta) as caught:
        read(uri, DeltaPosition(MODEL, 1))
    assert caught.value.sequence == 1 and f"{MODEL} v1 #1" in str(caught.value)


def test_reader_keeps_polling_one_table_object(uri: str) -> None:
    writer, reader = ModelDeltaTable(uri), ModelDeltaTable(uri)
    position = DeltaPosition(MODEL, 1)
    assert list(reader.after(position, width=8)) == []  # no table yet: nothing, no error
    for count in (2, 0, 1):
        publish_chain(writer, count)
        got = list(reader.after(position, width=8))
        assert len(got) == count
        position = got[-1].position if got else position
    assert position.sequence == 3


# Whole or none ------------------------------------------------------------------------------
def test_a_writer_that_fails_at_its_commit_leaves_no_visible_delta(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loser of a race on (base, sequence) has written its data file when its commit fails:
    the file stays on disk, invisible; one delta per sequence is visible, and the loser is told
    which sequence the table expects now."""
    first, second = ModelDeltaTable(uri), ModelDeltaTable(uri)
    publish_chain(first, 1)
    winner = make(first.last(MODEL, 1), seed=7)
    loser = make(second.last(MODEL, 1), seed=8)
    real_write = module.write_deltalake
    files_before: set[Path] = set()

    def interleaved(*args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(module, "write_deltalake", real_write)
        first.publish(winner)  # lands between the loser's checks and its commit
        files_before.update(Path(uri).rglob("*.parquet"))
        real_write(*args, **kwargs)

    monkeypatch.setattr(module, "write_deltalake", interleaved)
    with pytest.raises(SequenceConflict) as caught:
        second.publish(loser)
    assert caught.value.expected == 3 and "another writer committed first" in str(caught.value)
    orphans = set(Path(uri).rglob("*.parquet")) - files_before
    assert len(orphans) == 1  # the loser's data, written before its commit failed
    got = read(uri, DeltaPosition(MODEL, 1))
    assert [d.sequence for d in got] == [1, 2] and same(got[1], winner)


def test_racing_writer_processes_never_publish_a_sequence_twice(uri: str) -> None:
    """Two processes publish to one base as fast as they can: every sequence is visible once,
    the chain is whole, and the losers of each race were refused."""
    script = textwrap.dedent(
        f"""
        import sys, numpy as np
        from training.streaming.deltas import ModelDelta, ModelDeltaTable, SequenceConflict
        table, won, lost = ModelDeltaTable(sys.argv[1]), 0, 0
        while won < 12:
            after = table.last({MODEL!r}, 1)
            delta = ModelDelta.build(after, item_indices=np.arange(1, 50), item_vectors=np.ones((49, 8)),
                                     silver_version=after.sequence, kafka_offsets={{0: after.sequence}})
            try:
                table.publish(delta)
                won += 1
            except SequenceConflict:
                lost += 1
        print(won, lost)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ModelDeltaTable(uri).publish(make(DeltaPosition(MODEL, 1)))  # created before the race
    writers = [subprocess.Popen([sys.executable, "-c", script, uri], env=env, stdout=subprocess.PIPE) for _ in range(2)]
    outputs = [writer.communicate(timeout=240)[0].decode().split() for writer in writers]
    assert all(writer.returncode == 0 for writer in writers)
    got = read(uri, DeltaPosition(MODEL, 1))
    assert [d.sequence for d in got] == list(range(1, 26))
    conflicts = sum(int(lost) for _, lost in outputs)
    print(f"conflicts refused: {conflicts}")  # evidence for the docs; 0 when the writers never overlapped


def test_killed_writer_leaves_whole_deltas_and_a_resumable_table(uri: str) -> None:
    script = textwrap.dedent(
        f"""
        import sys, numpy as np
        from training.streaming.deltas import ModelDelta, ModelDeltaTable
        table = ModelDeltaTable(sys.argv[1])
        while True:
            after = table.last({MODEL!r}, 1)
            table.publish(ModelDelta.build(after, item_indices=np.arange(1, 20001),
                          item_vectors=np.full((20000, 64), after.sequence), silver_version=0, kafka_offsets={{}}))
        """
    )
    writer = subprocess.Popen([sys.executable, "-c", script, uri], env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 120
    while ModelDeltaTable(uri).last(MODEL, 1).sequence < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.3)  # into the middle of a later delta
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    got = read(uri, DeltaPosition(MODEL, 1), width=64)
    assert len(got) >= 2 and [d.sequence for d in got] == list(range(1, len(got) + 1))
    assert all((d.item_vectors == d.sequence - 1).all() for d in got)
    table = ModelDeltaTable(uri)
    resumed = make(table.last(MODEL, 1), width=64)
    table.publish(resumed)
    assert read(uri, got[-1].position, width=64)[0].sequence == len(got) + 1


def test_the_last_sequence_survives_a_log_checkpoint(uri: str) -> None:
    """The base's last sequence lives in the app transaction: it must come through delta-rs's
    checkpoint (every 100 commits) once the commits before it are cleaned up."""
    table = ModelDeltaTable(uri)
    published = publish_chain(table, 101, rows=1)
    log = Path(uri) / "_delta_log"
    checkpoint = json.loads((log / "_last_checkpoint").read_text())["version"]
    assert checkpoint >= 90 and (log / f"{checkpoint:020d}.checkpoint.parquet").exists()
    for commit in log.glob("*.json"):
        if int(commit.stem) <= checkpoint:
            commit.unlink()
    assert ModelDeltaTable(uri).last(MODEL, 1) == published[-1].position
    assert [d.sequence for d in read(uri, published[98].position)] == [100, 101]


# Publishing refusals ------------------------------------------------------------------------
def test_publish_refuses_a_sequence_that_is_not_the_next(uri: str) -> None:
    table = ModelDeltaTable(uri)
    published = publish_chain(table, 2)
    with pytest.raises(SequenceConflict, match="expects #3") as caught:
        table.publish(make(published[0].position, seed=9))  # a second #2
    assert caught.value.expected == 3
    with pytest.raises(SequenceConflict, match="expects #3"):
        table.publish(make(make(published[1].position).position))  # #4
    stranger = make(DeltaPosition(MODEL, 1, 2, "ab" * 32))  # #3 after another #2 than the table's
    with pytest.raises(SequenceConflict, match="built after another delta #2"):
        table.publish(stranger)
    assert table.last(MODEL, 1) == published[1].position


def test_publish_refuses_another_width_than_the_bases_earlier_deltas(uri: str) -> None:
    table = ModelDeltaTable(uri)
    first = publish_chain(table, 1)[0]
    with pytest.raises(WidthMismatch, match="width 4, expected 8") as caught:
        table.publish(make(first.position, width=4))
    assert (caught.value.expected, caught.value.found) == (8, 4)
    table.publish(make(DeltaPosition(MODEL, 2), width=4))  # a new base may have another width


def test_publish_refuses_a_record_whose_checksum_is_not_its_content(uri: str) -> None:
    delta = make(DeltaPosition(MODEL, 1))
    forged = ModelDelta(**{**vars(delta), "silver_version": delta.silver_version + 1})
    with pytest.raises(ChecksumMismatch):
        ModelDeltaTable(uri).publish(forged)


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"item_indices": [3, 4, 3]}, DuplicateItems, r"twice: \[3\]"),
        ({"new_items": {"a": 3, "b": 3}, "item_indices": [3, 4, 5]}, DuplicateItems, "one index"),
        ({"item_vectors": np.full((3, 8), np.nan)}, MalformedDelta, "non-finite"),
        ({"item_indices": [0, 1, 2]}, MalformedDelta, "padding"),
        ({"item_indices": [1, 2]}, MalformedDelta, "2 item indices but vectors of shape"),
        ({"new_items": {"late": 99}}, MalformedDelta, "no row in the delta"),
        ({"kafka_offsets": {0: -1}}, MalformedDelta, "offsets are >= 0"),
        ({"dense_weights": b""}, MalformedDelta, "dense_weights"),
    ],
)
def test_a_malformed_delta_cannot_be_built(fields: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as caught:
        make(DeltaPosition(MODEL, 1), rows=3, **fields)
    assert f"{MODEL} v1 #1" in str(caught.value)


def test_a_delta_is_read_only_and_leaves_the_writers_arrays_writable(uri: str) -> None:
    vectors = np.ones((2, 8), dtype=np.float32)
    delta = make(DeltaPosition(MODEL, 1), rows=2, item_vectors=vectors)
    with pytest.raises(ValueError, match="read-only"):
        delta.item_vectors[0, 0] = 2.0
    vectors[0, 0] = 2.0  # the writer reuses its buffer after building: publish notices
    with pytest.raises(ChecksumMismatch):
        ModelDeltaTable(uri).publish(delta)


def test_positions_check_their_fields() -> None:
    with pytest.raises(ValueError, match="letters"):
        DeltaPosition("m'; DROP", 1)
    with pytest.raises(ValueError, match="checksum"):
        DeltaPosition(MODEL, 1, 2)
    with pytest.raises(ValueError, match="base versions start at 1"):
        DeltaPosition(MODEL, 0)


# Reading refusals ---------------------------------------------------------------------------
def test_reader_refuses_a_width_other_than_expected(uri: str) -> None:
    publish_chain(ModelDeltaTable(uri), 1)
    with pytest.raises(WidthMismatch, match="width 8, expected 64") as caught:
        read(uri, DeltaPosition(MODEL, 1), width=64)
    assert caught.value.sequence == 1


def test_reader_refuses_a_sequence_gap_after_the_good_deltas(uri: str) -> None:
    published = publish_chain(ModelDeltaTable(uri), 4)
    DeltaTable(uri).delete("base_version = 1 AND sequence = 2")  # not through the module
    reader = ModelDeltaTable(uri).after(DeltaPosition(MODEL, 1), width=8)
    assert same(next(reader), published[0])  # the good delta before the gap is delivered
    with pytest.raises(SequenceGap, match="#2: the log records it, but no row holds it"):
        next(reader)
    DeltaTable(uri).delete("base_version = 1 AND sequence = 4")
    with pytest.raises(SequenceGap, match="#4: the log records it, but no row holds it"):
        read(uri, published[2].position)


def test_reader_refuses_duplicate_items_in_a_stored_delta(uri: str) -> None:
    forge(uri, make(DeltaPosition(MODEL, 1), rows=3), item_indices=[5, 6, 5])
    with pytest.raises(DuplicateItems, match=r"twice: \[5\]"):
        read(uri, DeltaPosition(MODEL, 1))


def test_reader_refuses_an_index_past_the_table(uri: str) -> None:
    publish_chain(ModelDeltaTable(uri), 1)  # indices 1..6
    assert len(read(uri, DeltaPosition(MODEL, 1), table_rows=7)) == 1
    with pytest.raises(MalformedDelta, match="item index 6 >= 6 rows"):
        read(uri, DeltaPosition(MODEL, 1), table_rows=6)


def test_reader_detects_a_flipped_byte_in_a_stored_payload(uri: str) -> None:
    published = publish_chain(ModelDeltaTable(uri), 3)
    path = data_file(uri, 2)
    content = bytearray(path.read_bytes())
    at = content.find(published[1].item_vectors.tobytes()[:32])
    assert at > 0  # vectors are stored plain, so they can be found in the file
    content[at + 9] ^= 0x01  # one mantissa bit of one value
    path.write_bytes(bytes(content))
    reader = ModelDeltaTable(uri).after(DeltaPosition(MODEL, 1), width=8)
    assert next(reader).sequence == 1
    with pytest.raises(ChecksumMismatch, match="#2: payload hashes to"):
        next(reader)


def test_reader_detects_a_tampered_checksum(uri: str) -> None:
    publish_chain(ModelDeltaTable(uri), 2)
    DeltaTable(uri).update(updates={"checksum": "'" + "0" * 64 + "'"}, predicate="sequence = 2")
    with pytest.raises(ChecksumMismatch) as caught:
        read(uri, DeltaPosition(MODEL, 1))
    assert (caught.value.model, caught.value.base_version, caught.value.sequence) == (MODEL, 1, 2)


# Unknown bases and drops --------------------------------------------------------------------
def test_unknown_base_reads_empty_and_a_position_past_the_table_is_stale(uri: str) -> None:
    publish_chain(ModelDeltaTable(uri), 2)
    assert read(uri, DeltaPosition(MODEL, 9)) == []
    with pytest.raises(StalePosition, match="last delta of this base is #0"):
        read(uri, DeltaPosition(MODEL, 9, 1, "ab" * 32))


def test_drop_removes_only_that_bases_deltas_in_one_commit(uri: str) -> None:
    table = ModelDeltaTable(uri)
    old = publish_chain(table, 3, base=1)
    kept = publish_chain(table, 2, base=2)
    other_model = publish_chain(table, 1, base=1, model="streamrec-ranking")
    version = DeltaTable(uri).version()
    assert table.drop(MODEL, 1) == 3
    assert DeltaTable(uri).version() == version + 1
    assert read(uri, DeltaPosition(MODEL, 1)) == [] and table.last(MODEL, 1) == DeltaPosition(MODEL, 1)
    assert [d.sequence for d in read(uri, DeltaPosition(MODEL, 2))] == [1, 2]
    assert same(read(uri, DeltaPosition("streamrec-ranking", 1))[0], other_model[0])
    assert same(read(uri, kept[0].position)[0], kept[1])
    # a replica that had applied the dropped deltas is told to reload its base ...
    with pytest.raises(StalePosition):
        read(uri, old[1].position)
    # ... also once the base has new deltas past its position: they do not follow what it applied
    republished = publish_chain(table, 3, base=1)
    assert republished[0].sequence == 1
    with pytest.raises(BrokenChain, match="#3: does not follow"):
        read(uri, old[1].position)
    assert table.drop(MODEL, 7) == 0


def test_a_publish_racing_a_drop_is_refused(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    writer, operator = ModelDeltaTable(uri), ModelDeltaTable(uri)
    published = publish_chain(writer, 2)
    real_write = module.write_deltalake

    def drop_first(*args: Any, **kwargs: Any) -> None:
        operator.drop(MODEL, 1)  # lands between the writer's checks and its commit
        real_write(*args, **kwargs)

    monkeypatch.setattr(module, "write_deltalake", drop_first)
    with pytest.raises(SequenceConflict) as caught:
        writer.publish(make(published[-1].position))
    assert caught.value.expected == 1
    assert read(uri, DeltaPosition(MODEL, 1)) == []


def test_module_imports_no_torch_or_pyspark() -> None:
    code = (
        "import sys, training.streaming.deltas; "
        "assert not {'torch', 'pyspark', 'ray', 'mlflow'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})

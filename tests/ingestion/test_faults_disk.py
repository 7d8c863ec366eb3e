"""Fault: the disk under the lake full during a write (issue 30, item 3). The lake sits on a
small tmpfs mounted for the test and filled to its last byte; mounting needs root (the test is
skipped without it)."""

from __future__ import annotations

import errno
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from ingestdata import coordinates, encode_event, events, fresh_settings, send, table

from infra.lake import LakeFullError, append_once
from infra.settings import Settings
from ingestion.checkpoints import checkpoint_path
from ingestion.errors import IngestError
from ingestion.schema import BRONZE_TABLE, SILVER_TABLE
from ingestion.stream import run_ingest


@pytest.fixture
def small_lake(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path / "lake"``: a 16 MiB tmpfs of its own (where ``fresh_settings`` puts the lake)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs under the lake needs root")
    lake = tmp_path / "lake"
    lake.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(lake)], check=True)
    try:
        yield lake
    finally:
        subprocess.run(["umount", "--lazy", str(lake)], check=True)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to its last byte; returns the file to delete."""
    filler = directory / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    os.write(descriptor, b"\0" * size)
            except OSError as error:
                assert error.errno == errno.ENOSPC
    finally:
        os.close(descriptor)
    return filler


def test_an_append_on_a_full_disk_names_the_table_and_leaves_the_last_version_readable(small_lake: Path) -> None:
    """delta-rs said only "Failed to parse parquet: ... No space left on device (os error 28)"."""
    uri = str(small_lake / "t")
    append_once(uri, pa.table({"a": [1, 2, 3]}), "app", 0)
    filler = fill(small_lake)
    message = f"no space left on the device under {re.escape(uri)}: nothing .* stays at version 0 .*run the same"
    with pytest.raises(LakeFullError, match=message):
        append_once(uri, pa.table({"a": list(range(10_000))}), "app", 1)
    assert DeltaTable(uri).version() == 0 and DeltaTable(uri).to_pyarrow_table()["a"].to_pylist() == [1, 2, 3]
    filler.unlink()
    assert append_once(uri, pa.table({"a": list(range(10_000))}), "app", 1)
    assert DeltaTable(uri).version() == 1 and DeltaTable(uri).to_pyarrow_table().num_rows == 10_003


def test_ingest_on_a_full_disk_stops_naming_bronze_and_loses_nothing(
    spark: object, kafka_broker: Settings, tmp_path: Path, small_lake: Path
) -> None:
    """The stream stops with the table, 'no space left' and its checkpoint; bronze and silver
    stay readable at their last versions; once space is freed, the same command lands the rest
    exactly once (the failed micro-batch is replayed from the checkpoint)."""
    settings = fresh_settings(tmp_path, partitions=1)
    assert settings.lake_root == str(small_lake)
    first = send(settings, [encode_event(e) for e in events(50)])
    run_ingest(settings, until_idle=True, report=lambda line: None)
    bronze_uri, silver_uri = settings.table_uri(BRONZE_TABLE), settings.table_uri(SILVER_TABLE)
    versions = DeltaTable(bronze_uri).version(), DeltaTable(silver_uri).version()
    filler = fill(small_lake)
    later = send(settings, [encode_event(e) for e in events(10, seed=3)])
    with pytest.raises(IngestError) as stopped:
        run_ingest(settings, until_idle=True, report=lambda line: None)
    message = str(stopped.value)
    assert f"no space left on the device under {bronze_uri}" in message, message
    assert f"stays at version {versions[0]}" in message and str(checkpoint_path(settings)) in message
    assert (DeltaTable(bronze_uri).version(), DeltaTable(silver_uri).version()) == versions
    assert coordinates(table(bronze_uri)) == [(0, sent.offset) for sent in first]
    assert table(silver_uri).num_rows == 50

    filler.unlink()
    run_ingest(settings, until_idle=True, report=lambda line: None)
    assert coordinates(table(bronze_uri)) == [(0, sent.offset) for sent in first + later]
    assert table(silver_uri).num_rows == 60

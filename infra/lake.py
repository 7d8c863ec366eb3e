"""Delta tables of the lake: versions, idempotent appends, changes between versions, Spark reads.

Delta tables are written with ``deltalake`` (delta-rs). Every package reaches the lake
through these helpers:

* ``append_once`` commits rows together with a Delta *app transaction* ``(app_id, version)``
  and skips an append whose version the table already records, so a replayed write (a
  micro-batch after a crash, a re-run build) lands at most once; ``committed_version``
  reads the record back.
* ``rows_between`` gives the rows of the files a table gained and lost between two
  versions. On the append-only tables (bronze, silver) that is exactly "rows added since
  version N" (a compaction removes and re-adds the same rows; callers cancel those by key).
  It needs no table property, unlike Delta's change data feed, and reads only new files.
* ``read_delta``: Spark reads the Parquet files of a given table version, so jobs read
  exactly the snapshot they record.
* ``reporting_a_full_disk``: a write that finds no space left on the lake's device raises
  ``LakeFullError`` naming the table, its path and the version that stays readable (delta-rs
  says "Failed to parse parquet: ... No space left on device (os error 28)").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from infra.errors import StreamrecError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

NO_SPACE = ("No space left on device", "os error 28")  # what delta-rs and the OS say (ENOSPC)


class LakeFullError(StreamrecError):
    """A write found no space left on the lake's device; nothing of it was committed."""


@contextmanager
def reporting_a_full_disk(uri: str) -> Iterator[None]:
    """Raise LakeFullError for a write to the table at ``uri`` inside that runs out of disk space:
    its message names the table, that nothing was committed, the version that stays readable and
    what to do (one line: Spark's error digest keeps the last exception line)."""
    try:
        yield
    except Exception as error:
        if not any(sign in str(error) for sign in NO_SPACE):
            raise
        version = table_version(uri)
        kept = "no table was created" if version is None else f"the table stays at version {version} (readable)"
        raise LakeFullError(
            f"no space left on the device under {uri}: nothing of this write was committed, {kept}. "
            "Free space there (delta-rs may have left an uncommitted Parquet file, which `vacuum` removes) "
            "or move the lake (STREAMREC_LAKE_URI), then run the same command again: it continues from the "
            f"last commit. ({str(error).splitlines()[0]})"
        ) from error


def table_version(uri: str) -> int | None:
    """The latest version of the Delta table at ``uri``, or None when there is no table."""
    if not DeltaTable.is_deltatable(uri):
        return None
    return DeltaTable(uri).version()


def committed_version(uri: str, app_id: str) -> int | None:
    """The last version ``app_id`` committed to the Delta table at ``uri`` (None: none yet)."""
    if not DeltaTable.is_deltatable(uri):
        return None
    return DeltaTable(uri).transaction_version(app_id)


def append_once(uri: str, table: pa.Table, app_id: str, version: int, partition_by: list[str] | None = None) -> bool:
    """Append ``table`` and record ``(app_id, version)`` in one commit, unless already recorded.

    Returns whether it wrote. Empty tables are committed too, so the version is recorded.
    """
    done = committed_version(uri, app_id)
    if done is not None and done >= version:
        return False
    with reporting_a_full_disk(uri):
        write_deltalake(
            uri,
            table,
            mode="append",
            partition_by=partition_by,
            commit_properties=CommitProperties(app_transactions=[Transaction(app_id, version)]),
        )
    return True


def rows_between(uri: str, since: int | None, until: int, columns: list[str]) -> tuple[pa.Table, pa.Table]:
    """(rows of files added, rows of files removed) from version ``since`` (None: no table) to ``until``."""
    dataset = DeltaTable(uri, version=until).to_pyarrow_dataset()
    new = {fragment.path: fragment for fragment in dataset.get_fragments()}
    old = {}
    if since is not None:
        old = {
            fragment.path: fragment for fragment in DeltaTable(uri, version=since).to_pyarrow_dataset().get_fragments()
        }
    added = [new[path] for path in new.keys() - old.keys()]
    removed = [old[path] for path in old.keys() - new.keys()]
    return _read(dataset, added, columns), _read(dataset, removed, columns)


def _read(dataset: ds.FileSystemDataset, fragments: list[ds.Fragment], columns: list[str]) -> pa.Table:
    """``columns`` of ``fragments`` (files of ``dataset``'s table), with the table's schema."""
    subset = ds.FileSystemDataset(fragments, dataset.schema, dataset.format, filesystem=dataset.filesystem)
    return subset.to_table(columns=columns)


def read_delta(spark: SparkSession, uri: str, version: int | None = None) -> DataFrame:
    """The Delta table at ``uri`` (at ``version``, default latest) as a Spark DataFrame."""
    if not DeltaTable.is_deltatable(uri):
        raise FileNotFoundError(f"no Delta table at {uri}")
    table = DeltaTable(uri, version=version)
    files = table.file_uris()
    if not files:
        from pyspark.sql.pandas.types import from_arrow_schema

        arrow_schema = table.schema().to_arrow()
        return spark.createDataFrame([], schema=from_arrow_schema(arrow_schema))
    return spark.read.option("basePath", uri).parquet(*files)

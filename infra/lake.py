"""Delta tables of the lake: versions, and reading a pinned version into Spark.

Delta tables are written with ``deltalake`` (delta-rs); Spark reads the Parquet files that
make up a given table version, so jobs read exactly the snapshot they record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deltalake import DeltaTable

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def table_version(uri: str) -> int | None:
    """The latest version of the Delta table at ``uri``, or None when there is no table."""
    if not DeltaTable.is_deltatable(uri):
        return None
    return DeltaTable(uri).version()


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

"""Local Spark sessions run their Python workers in the project's interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = """
import sys
from infra.settings import get_settings
from infra.spark import spark_session

spark = spark_session(get_settings(), "worker-python-test")

def executable(batches):
    import pyarrow as pa
    for _ in batches:
        yield pa.RecordBatch.from_pydict({"python": [sys.executable]})

row = spark.range(1, numPartitions=1).mapInArrow(executable, "python string").collect()[0]
print("WORKER", row.python)
spark.stop()
"""


@pytest.mark.integration  # a local Spark session, in a subprocess
def test_workers_use_the_driver_interpreter_whatever_python3_is_on_path(tmp_path: Path) -> None:
    # A bare `python3` first on PATH (no pyarrow, no project packages): Spark's default.
    bare_bin = tmp_path / "bin"
    bare_bin.mkdir()
    (bare_bin / "python3").symlink_to("/usr/bin/python3")
    env = {k: v for k, v in os.environ.items() if k != "PYSPARK_PYTHON"}
    env["PATH"] = f"{bare_bin}{os.pathsep}{env['PATH']}"
    env["STREAMREC_HOME"] = str(tmp_path / "home")
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        env=env,
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"WORKER {sys.executable}" in done.stdout

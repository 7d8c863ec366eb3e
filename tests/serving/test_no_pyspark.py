"""Serving replicas need no pyspark: the app, its history's tail and the Kafka helpers they use
import and run without it (they once took those helpers from the Spark source's module)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
sys.modules["pyspark"] = None  # as on an image without pyspark: importing it raises ImportError
import serving.app
from types import SimpleNamespace
from ingestion.kafka_client import records_batch
batch = records_batch([SimpleNamespace(key=b"u1", value=b"{}", offset=7, timestamp=1000)], partition=2)
assert batch.num_rows == 1, batch
print(sorted(name for name in ("ingestion.kafka_source", "serving.history.tail") if name in sys.modules))
"""


def test_serving_imports_and_reads_records_without_pyspark() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "['serving.history.tail']"

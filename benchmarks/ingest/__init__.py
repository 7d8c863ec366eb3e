"""The ingest benchmark: `python -m benchmarks.ingest --help`."""

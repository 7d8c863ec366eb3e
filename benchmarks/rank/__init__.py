"""The rank benchmark: `python -m benchmarks.rank --help`."""

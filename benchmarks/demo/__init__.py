"""The demo benchmark: `python -m benchmarks.demo --help`."""

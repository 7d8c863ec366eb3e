"""The features benchmark: `python -m benchmarks.features --help`."""

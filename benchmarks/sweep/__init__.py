"""The scaling-sweep benchmark: `python -m benchmarks.sweep --help`."""

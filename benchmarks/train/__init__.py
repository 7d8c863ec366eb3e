"""The train benchmark: `python -m benchmarks.train --help`."""

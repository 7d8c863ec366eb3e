"""The serve benchmark: `python -m benchmarks.serve --help`."""

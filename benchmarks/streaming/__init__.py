"""Benchmarks of the streaming updates (issue 27)."""

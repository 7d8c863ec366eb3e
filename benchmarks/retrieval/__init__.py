"""Benchmarks of retrieval's search (issue 28)."""

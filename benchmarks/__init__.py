"""Reproducible benchmarks; each area writes JSON to benchmarks/results/."""

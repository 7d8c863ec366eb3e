"""Continual-learning benchmark (run.py)."""

"""Streaming updates (continual learning, part 2): the follow job's deltas and the table that carries them.

Modules here import no torch and no pyspark, so serving replicas can import them cheaply.
"""

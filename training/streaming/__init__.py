"""Streaming updates (continual learning, part 2): the follow job, its deltas and the table that carries them.

``deltas`` imports no torch and no pyspark, so serving replicas can import it cheaply; ``dense``
(the codec of a delta's dense weights) imports torch, as does the follow job.
"""

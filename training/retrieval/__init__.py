"""Retrieval training: HSTU and SASRec next-item models, their evaluation, export and `streamrec train` / `evaluate`."""

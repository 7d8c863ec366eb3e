"""Ranking training: multi-task rankers (ranker, DLRM baseline), their metrics, export and `streamrec train-ranking`."""

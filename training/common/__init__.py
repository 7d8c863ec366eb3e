"""Shared by retrieval and ranking: configs, encoders, sharded item table, losses, worker loop, MLflow."""

"""The training commands of the streamrec CLI (pyproject's ``training`` entry point)."""

from __future__ import annotations

import typer

from training.ranking.cli import RANKING_OPTIONS, train_ranking
from training.retrieval.cli import TRAIN_OPTIONS, evaluate, train
from training.sweep.cli import sweep


def register(app: typer.Typer) -> None:
    """Add the training commands to the streamrec CLI: retrieval (docs/training.md), multi-task
    ranking (docs/ranking.md) and scaling sweeps (docs/scaling.md)."""
    app.command("train")(TRAIN_OPTIONS.command(train))
    app.command("evaluate")(evaluate)
    app.command("train-ranking")(RANKING_OPTIONS.command(train_ranking))
    app.command("sweep")(sweep)

"""`streamrec demo`: the workflows' commands of the CLI."""

from __future__ import annotations

from typing import Annotated

import typer

from workflows.demo_options import DemoOptions

DEFAULTS = DemoOptions()


def demo(
    events: Annotated[int, typer.Option(help="Synthetic events to produce.", min=0)] = DEFAULTS.events,
    users: Annotated[int, typer.Option(help="Synthetic users.", min=1)] = DEFAULTS.users,
    items: Annotated[int, typer.Option(help="Synthetic items.", min=1)] = DEFAULTS.items,
    bad_fraction: Annotated[
        float, typer.Option(help="Share of malformed records (quarantined with a reason).", min=0, max=1)
    ] = DEFAULTS.bad_fraction,
    epochs: Annotated[int, typer.Option(help="Most epochs of SASRec and HSTU.", min=1)] = DEFAULTS.epochs,
    workers: Annotated[int, typer.Option(help="Ray Train workers.", min=1)] = DEFAULTS.workers,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic events and of training.")] = DEFAULTS.seed,
    ranking_epochs: Annotated[
        int, typer.Option(help="Most epochs of the multi-task ranker.", min=1)
    ] = DEFAULTS.ranking_epochs,
) -> None:
    """The loop end to end on the local mini-cluster: up, produce, ingest, features, train, register,
    serve, rank."""
    from workflows.demo import run_demo

    run_demo(DemoOptions(events, users, items, bad_fraction, epochs, workers, seed, ranking_epochs))


def register(app: typer.Typer) -> None:
    """Add `demo` to the streamrec CLI."""
    app.command("demo")(demo)

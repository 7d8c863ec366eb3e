"""The training CLI as the tests invoke it: wide, colourless output (help tables unclipped)."""

from __future__ import annotations

import typer

from training.cli import register

WIDE = {"COLUMNS": "400", "TERMINAL_WIDTH": "400", "NO_COLOR": "1"}


def training_app() -> typer.Typer:
    """A Typer app with the training commands registered, as `streamrec` has them."""
    app = typer.Typer()
    register(app)
    return app

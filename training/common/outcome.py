"""What a training command reports (``--json``): the outcome of a run, or its failure as exit status 1."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from infra.console import make_console
from training.common.errors import TrainingError

console = make_console()


def run_outcome(what: str, model: str, run: Callable[[], Any]) -> dict[str, Any]:
    """What ``run()`` produced as the commands print it (``--json``): a popularity baseline's
    metrics, or a registered run; a failed run is printed and exits with status 1."""
    try:
        result = run()
    except (TrainingError, FileNotFoundError, LookupError, ValueError) as error:
        console.print(f"[red]{what} failed:[/red] {error}")
        raise typer.Exit(1) from error
    if isinstance(result, dict):
        return {"model": "popularity", "metrics": result}
    return {
        "model": model,
        "run_name": result.run_name,
        "run_id": result.run_id,
        "model_version": result.model_version,
        "best_epoch": result.best_epoch,
        "metrics": result.metrics,
    }

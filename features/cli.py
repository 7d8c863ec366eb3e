"""`streamrec features ...` commands (registered through the streamrec.cli entry points)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.table import Table

from infra.console import make_console

# features.ranking's defaults, repeated so the CLI starts without numpy and pyarrow.
RANKING_WINDOW_S = 3600.0
RANKING_MAX_LEN = 50

console = make_console()


def register(app: typer.Typer) -> None:
    """Add the `features` sub-app to the streamrec CLI."""
    features = typer.Typer(help="Feature tables: item vocabulary, user sequences, item stats.", no_args_is_help=True)
    features.command("build")(build)
    features.command("versions")(versions)
    app.add_typer(features, name="features")


def build(
    incremental: Annotated[
        bool, typer.Option("--incremental", help="Apply only the silver rows added since the last build.")
    ] = False,
    ranking: Annotated[
        bool, typer.Option("--ranking", help="Also build features/ranking_examples (docs/ranking.md).")
    ] = False,
    ranking_window_s: Annotated[
        float, typer.Option(help="Ranking: label window after an exposure, in seconds.")
    ] = RANKING_WINDOW_S,
    ranking_max_len: Annotated[int, typer.Option(help="Ranking: history events kept per example.")] = RANKING_MAX_LEN,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the outcome as one JSON object on stdout (progress goes to stderr)."),
    ] = False,
) -> None:
    """Build the feature tables from the latest silver/events version; print versions read and written."""
    from features.build import build as run_build
    from features.ranking import RankingSpec
    from infra.cli import load_settings

    started = time.monotonic()
    progress = make_console(stderr=True) if as_json else console

    def log(message: str) -> None:
        progress.print(f"[dim]{time.monotonic() - started:6.1f}s[/dim] {message}")

    try:
        spec = RankingSpec(window_ms=int(ranking_window_s * 1000), max_len=ranking_max_len) if ranking else None
        report = run_build(load_settings(), incremental=incremental, log=log, ranking=spec)
    except (FileNotFoundError, ValueError) as error:
        console.print(f"[red]features build failed:[/red] {error}")
        raise typer.Exit(1) from error
    if as_json:
        print(json.dumps(report.summary()))
        return
    console.print(f"features build ({report.mode}) from silver/events version {report.silver_version}:")
    table = Table()
    for column in ("table", "version", "rows", "change"):
        table.add_column(column)
    for update in report.tables:
        change = "written" if update.written else "up to date"
        table.add_row(update.table, str(update.version), f"{update.rows:,}", change)
    console.print(table)
    if report.fallback_reason:
        console.print(f"ran a full build because {report.fallback_reason}")
    console.print(f"done in {time.monotonic() - started:.1f}s")


def versions() -> None:
    """Print the latest feature versions training would read, as JSON."""
    from features.reader import latest_versions
    from infra.cli import load_settings

    try:
        found = latest_versions(load_settings())
    except FileNotFoundError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from error
    print(json.dumps(found.as_dict()))

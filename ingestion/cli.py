"""`streamrec produce ...` and `streamrec ingest`: the ingestion commands of the CLI."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from infra.cli import load_settings

if TYPE_CHECKING:
    from infra.settings import Settings
    from ingestion.producer import OutRecord

Rate = Annotated[float, typer.Option(help="Events per second; 0 sends as fast as possible.", min=0)]
BadFraction = Annotated[
    float, typer.Option(help="Share of records replaced by malformed ones (every kind takes turns).", min=0, max=1)
]


def _send(records: Iterable[OutRecord], settings: Settings, **options: Any) -> None:
    """Produce ``records``; print the JSON summary (exit 1 when the broker is unreachable or lost some)."""
    from ingestion.producer import produce

    summary = produce(records, settings, **options)
    print(summary.to_json())
    if summary.failed:
        typer.echo(f"{summary.failed} records were not acknowledged by the broker", err=True)
        raise typer.Exit(1)


def produce_synthetic(
    users: Annotated[int, typer.Option(help="Number of users.", min=1)] = 1_000,
    items: Annotated[int, typer.Option(help="Number of items.", min=1)] = 5_000,
    events: Annotated[int, typer.Option(help="Number of records to send.", min=0)] = 100_000,
    clusters: Annotated[int, typer.Option(help="Latent interest clusters.", min=1)] = 50,
    span_days: Annotated[float, typer.Option(help="Days of simulated time the events cover.", min=0.001)] = 28.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    catalogue: Annotated[
        str, typer.Option(help="static (every item from the start) or drifting (launches and life cycles).")
    ] = "static",
    initial_item_share: Annotated[
        float | None,
        typer.Option(help="Share of items existing at the start; the rest launch steadily. Default: the catalogue's."),
    ] = None,
    half_life_days: Annotated[
        float | None, typer.Option(help="Popularity half-life after the rise; 0 = no decay.", min=0)
    ] = None,
    rise_hours: Annotated[float | None, typer.Option(help="Popularity rise after launch.", min=0)] = None,
    evergreen_share: Annotated[
        float | None, typer.Option(help="Share of items whose popularity never decays.", min=0, max=1)
    ] = None,
    rate: Rate = 0.0,
    bad_fraction: BadFraction = 0.0,
) -> None:
    """Send synthetic user actions (Zipf items, drifting interests, sessions; with --catalogue
    drifting, items that launch and fade) to the topic."""
    from ingestion.producer import with_bad_records
    from ingestion.synthetic import DRIFTING, SyntheticConfig, generate_events

    if catalogue not in ("static", "drifting"):
        raise typer.BadParameter("choose static or drifting", param_hint="--catalogue")
    settings = load_settings()
    given = {
        "initial_item_share": initial_item_share,
        "half_life_days": half_life_days,
        "rise_hours": rise_hours,
        "evergreen_share": evergreen_share,
    }
    churn: dict[str, Any] = {
        **(DRIFTING if catalogue == "drifting" else {}),
        **{k: v for k, v in given.items() if v is not None},
    }
    try:
        config = SyntheticConfig(
            users=users, items=items, events=events, clusters=clusters, span_days=span_days, seed=seed, **churn
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    records = with_bad_records(generate_events(config), bad_fraction, settings, seed)
    _send(records, settings, rate=rate or None, total=events, description="synthetic")


def produce_replay(
    path: Annotated[Path, typer.Argument(help="Dataset file.", exists=True, dir_okay=False)],
    fmt: Annotated[str, typer.Option("--format", help="sasrec, movielens or csv.")] = "csv",
    ts_unit: Annotated[str, typer.Option(help="Unit of csv timestamps: ms or s.")] = "ms",
    id_prefix: Annotated[str | None, typer.Option(help="event_id prefix; default <format>-<file stem>.")] = None,
    rate: Rate = 0.0,
    bad_fraction: BadFraction = 0.0,
) -> None:
    """Replay a real interaction dataset in time order."""
    from ingestion.producer import with_bad_records
    from ingestion.replay import FORMATS, read_replay, replay_events

    if fmt not in FORMATS:
        raise typer.BadParameter(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", param_hint="--format")
    if ts_unit not in ("ms", "s"):
        raise typer.BadParameter("choose ms or s", param_hint="--ts-unit")
    settings = load_settings()
    try:
        frame = read_replay(path, fmt, ts_unit=ts_unit, id_prefix=id_prefix)  # type: ignore[arg-type]
    except (ValueError, KeyError) as error:
        typer.echo(f"cannot read {path} as {fmt}: {error}", err=True)
        raise typer.Exit(2) from error
    records = with_bad_records(replay_events(frame), bad_fraction, settings)
    _send(records, settings, rate=rate or None, total=len(frame), description=f"replay {path.name}")


def ingest(
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Stop once everything on the topic now is in bronze and silver.")
    ] = False,
    for_seconds: Annotated[float | None, typer.Option("--for", help="Stop after this many seconds.", min=0)] = None,
) -> None:
    """Stream the topic into bronze/quarantine and keep silver caught up (exactly once, crash-safe)."""
    import time

    from infra.console import make_console
    from ingestion.stream import BatchReport, run_ingest

    if until_idle and for_seconds is not None:
        raise typer.BadParameter("use either --until-idle or --for", param_hint="--for")
    console = make_console(stderr=True, soft_wrap=True, highlight=False)
    started, total = time.monotonic(), [0]

    def show(item: BatchReport | str) -> None:
        if isinstance(item, BatchReport):
            total[0] += item.records
            rate = total[0] / (time.monotonic() - started)
            item = f"{item} | total {total[0]:,} records, {rate:,.0f}/s since start"
        console.print(item, markup=False)

    stats = run_ingest(load_settings(), until_idle=until_idle, duration_s=for_seconds, report=show)
    print(stats.to_json())


def register(app: typer.Typer) -> None:
    """Add `produce synthetic`, `produce replay` and `ingest` to the streamrec CLI."""
    produce_app = typer.Typer(help="Send user-action events to Kafka.", no_args_is_help=True)
    produce_app.command("synthetic")(produce_synthetic)
    produce_app.command("replay")(produce_replay)
    app.add_typer(produce_app, name="produce")
    app.command("ingest")(ingest)

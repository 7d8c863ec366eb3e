"""The `streamrec` command line.

Cluster lifecycle commands live here. Every other package adds its own commands through
the ``streamrec.cli`` entry-point group: each entry names a ``register(app)`` function,
so infra never imports the packages above it.
"""

from __future__ import annotations

import json
import logging
import os
from importlib.metadata import entry_points
from typing import Annotated

import typer
from rich.table import Table

from infra import cluster, dagster_automation, ray_access
from infra.apps import ClusterApp, cluster_apps, not_running
from infra.console import make_console
from infra.errors import StreamrecError
from infra.settings import Settings, get_settings

app = typer.Typer(
    help="streamrec: stream user actions into Delta, train generative recommenders, serve them.",
    no_args_is_help=True,
    add_completion=False,
)
console = make_console()

ComponentNames = Annotated[
    list[str] | None,
    typer.Argument(
        help="Components to act on (kafka, mlflow, ray; with the cluster profile also ray-worker, spark-master,"
        " spark-worker; dagster, unless dagster.enabled is off; serve, the Ray Serve application); all when omitted"
        " (serve only when a production model exists)."
    ),
]

Continual = Annotated[
    bool | None,
    typer.Option(
        "--continual/--no-continual",
        help="Also turn the loop on in Dagster (the schedules and sensors tagged streamrec/loop: ingest every 15"
        " minutes, the hourly warm start, the silver and registered-model sensors, the follow-job sensor that keeps"
        " `train --follow` running), starting Dagster if needed;"
        " --no-continual turns them off. The choice is kept in Dagster's storage: a later plain `up` leaves it."
        " Default: the dagster.continual setting (on: turn on; off: leave as is).",
    ),
]


def load_settings() -> Settings:
    """The settings for a command; invalid ones are printed (no traceback) and exit with status 2.

    Every package's CLI reads its settings through this one function."""
    try:
        return get_settings()
    except Exception as error:  # pydantic and YAML errors: show them, not a traceback
        console.print(f"[red]invalid settings:[/red] {error}")
        raise typer.Exit(2) from error


def _table(states: list[cluster.ComponentState]) -> Table:
    table = Table(title="streamrec mini-cluster")
    for column in ("component", "mode", "health", "address", "pid", "log"):
        table.add_column(column)
    for state in states:
        health = f"[green]healthy[/green] ({state.detail})" if state.healthy else f"[red]down[/red] ({state.detail})"
        table.add_row(state.name, state.mode, health, state.address, str(state.pid or "-"), state.log_file or "-")
    return table


@app.command()
def up(components: ComponentNames = None, continual: Continual = None) -> None:
    """Start the local mini-cluster in the background (external components are checked), then
    serve the production model if there is one."""
    settings = load_settings()
    processes, apps = _split(components)
    if continual is not None:
        # The loop lives in Dagster: start it for this call, with whatever else was named.
        # Turning on happens once it answers (DagsterWorkflows.after_healthy).
        settings = settings.updated(dagster_enabled=True, dagster_continual=continual)
        if processes and "dagster" not in processes:
            processes = [*processes, "dagster"]
    with console.status("starting components..."):
        states = cluster.up(settings, processes or None)  # serving needs every process
    if continual is False:
        switched = dagster_automation.set_loop(settings, on=False)
        console.print(f"dagster: {dagster_automation.loop_note(switched, on=False)}")
    for cluster_app, named in apps:
        with console.status(f"starting {cluster_app.name}..."):
            state = cluster_app.start(settings, required=named)
        if state is not None:
            states.append(state)
        else:
            console.print(
                f"{cluster_app.name}: not started (nothing to serve yet; `streamrec up {cluster_app.name}` says why)"
            )
    console.print(_table(states))
    console.print(f"home: {settings.home}")
    if any(state.name == "ray" for state in states):
        console.print(ray_dashboard_line(settings))


def ray_dashboard_line(settings: Settings) -> str:
    """Where the Ray dashboard is and, with token authentication, the file whose token signs in
    (`streamrec up` and the demo close with it)."""
    sign_in = f" (sign in with the token in {settings.ray_token_path})" if ray_access.token_auth(settings) else ""
    return f"Ray dashboard: {settings.ray.dashboard_url}{sign_in}"


@app.command()
def status(
    components: ComponentNames = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show each component's health; exits 1 when any is down."""
    settings = load_settings()
    processes, apps = _split(components)
    states = cluster.status(settings, processes) if processes is None or processes else []
    for cluster_app, named in apps:
        state = cluster_app.state(settings)
        if state is None and named:
            state = not_running(cluster_app, "-", "not running")
        if state is not None:
            states.append(state)
    instigators, unread = _automation(settings, states)
    if as_json:
        rows = [dict(state.__dict__) for state in states]
        for row in rows:  # the list keeps its shape; Dagster's row also lists its schedules and sensors
            if row["name"] == "dagster" and row["healthy"]:
                row["automation"] = [instigator.as_json() for instigator in instigators]
        print(json.dumps(rows))
    else:
        console.print(_table(states))
        if instigators:
            console.print(automation_table(instigators))
        if unread:
            console.print(f"schedules and sensors: {unread}")
    if not all(state.healthy for state in states):
        raise typer.Exit(1)


def _automation(
    settings: Settings, states: list[cluster.ComponentState]
) -> tuple[list[dagster_automation.Instigator], str]:
    """Dagster's schedules and sensors when a healthy Dagster is among ``states`` ([] otherwise),
    and why they could not be read ('' when they were)."""
    if not any(state.name == "dagster" and state.healthy for state in states):
        return [], ""
    try:
        return dagster_automation.read_instigators(settings), ""
    except dagster_automation.DagsterApiError as error:
        return [], str(error)


def automation_table(instigators: list[dagster_automation.Instigator]) -> Table:
    """Each schedule and sensor: whether it is part of the loop, its state and its last tick."""
    table = Table(title="Dagster schedules and sensors (loop: `streamrec up --continual`)")
    for column in ("name", "kind", "loop", "state", "when", "last tick", "tick", "note"):
        table.add_column(column)
    for instigator in instigators:
        tick = instigator.last_tick
        state = f"[green]{instigator.state}[/green]" if instigator.running else instigator.state
        table.add_row(
            instigator.name,
            instigator.kind,
            "yes" if instigator.loop else "-",
            state,
            instigator.timing,
            tick.when if tick else "-",
            tick.status if tick else "-",
            tick.note if tick else "",
        )
    return table


@app.command()
def down(components: ComponentNames = None) -> None:
    """Stop exactly the processes `up` started (and first the applications deployed on them)."""
    settings = load_settings()
    processes, apps = _split(components)
    stopped = [
        cluster_app.name for cluster_app, _ in apps if cluster_app.state(settings) and cluster_app.stop(settings)
    ]
    if processes is None or processes:
        stopped += cluster.down(settings, processes)
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command("settings")
def show_settings() -> None:
    """Print the effective settings as JSON."""
    print(json.dumps(load_settings().flat_dump(mode="json"), indent=2, ensure_ascii=False))


def _split(names: list[str] | None) -> tuple[list[str] | None, list[tuple[ClusterApp, bool]]]:
    """(process components for ``infra.cluster``: None = all, [] = none named; [(application,
    named)]). Naming neither kind means all of both."""
    apps = cluster_apps()
    app_names = {cluster_app.name for cluster_app in apps}
    if not names:
        return None, [(cluster_app, False) for cluster_app in apps]
    processes = [name for name in names if name not in app_names]
    chosen = [(cluster_app, True) for cluster_app in apps if cluster_app.name in names]
    return processes, chosen


def _register_plugins() -> None:
    for entry in sorted(entry_points(group="streamrec.cli"), key=lambda e: e.name):
        entry.load()(app)


def quiet_library_logs() -> None:
    """Keep libraries' chatter off the console: kafka-python's auto-commit notes and event-loop
    timing, MLflow's run-URL banners, registry waits and download bars, Ray Serve's driver-side
    start notes (streamrec prints its own summary)."""
    logging.getLogger("kafka").setLevel(logging.ERROR)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # deploys print their own "serving ..." line
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def main() -> None:
    """Console-script entry point: a StreamrecError is printed as its message, exit status 1."""
    quiet_library_logs()
    _register_plugins()
    try:
        app()
    except StreamrecError as error:
        make_console(stderr=True, highlight=False).print(f"[red]error:[/red] {error}", markup=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

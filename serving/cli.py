"""`streamrec serve up|status|down`, `streamrec recommend`, `streamrec promote`, `streamrec rollback`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from infra.cli import load_settings
from infra.console import make_console

console = make_console(highlight=False)
serve_app = typer.Typer(help="The Ray Serve application: retrieval and recommendations.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the serving commands to the streamrec CLI."""
    app.add_typer(serve_app, name="serve")
    app.command("recommend")(recommend)
    app.command("promote")(promote)
    app.command("rollback")(rollback)


@serve_app.command("up")
def up() -> None:
    """Serve the production model on the Ray cluster (returns once /healthz answers)."""
    from serving.deploy import base_url, deploy

    settings = load_settings()
    with console.status("starting serving (model download, index build, history bootstrap)..."):
        body = deploy(settings)
    model = body["model"]
    console.print(
        f"serving {model['name']} version {model['version']} ({model['items']} items, {model['index']} index) "
        f"at {base_url(settings)}  (API docs: {base_url(settings)}/docs)"
    )


@serve_app.command("status")
def status(as_json: Annotated[bool, typer.Option("--json", help="Print /healthz as JSON.")] = False) -> None:
    """The served model, swaps, load errors and each history shard's position; exits 1 unless healthy."""
    from serving.deploy import health

    body = health(load_settings())
    if as_json:
        print(json.dumps(body))
    else:
        model = body.get("model") or {}
        delta = model.get("delta") or {}
        index = f"{model.get('index')}, model delta #{delta['sequence']}" if delta else model.get("index")
        console.print(f"status: {body['status']}  model: version {model.get('version')} ({index})")
        if body.get("last_error"):
            console.print(f"[red]last error:[/red] {body['last_error']}")
        if body.get("delta_last_error"):
            console.print(f"[red]model deltas:[/red] {body['delta_last_error']}")
        table = Table(title="online history")
        for column in ("shard", "partition", "next offset", "lag", "users", "events applied"):
            table.add_column(column)
        for shard in body.get("history_shards", []):
            for partition, state in sorted((shard.get("partitions") or {}).items()):
                table.add_row(
                    str(shard.get("shard")), str(partition), str(state.get("next_offset")), str(state.get("lag")),
                    str(shard.get("users")), str(shard.get("events_applied")),
                )  # fmt: skip
        console.print(table)
    if body.get("http_status") != 200:
        raise typer.Exit(1)


@serve_app.command("down")
def down() -> None:
    """Delete the serving application from the Ray cluster."""
    from serving.deploy import undeploy

    console.print("serving stopped" if undeploy(load_settings()) else "serving was not running")


def recommend(
    user: Annotated[str, typer.Option("--user", help="The user to recommend for.")],
    k: Annotated[int, typer.Option("-k", help="How many items.", min=1)] = 10,
    include_seen: Annotated[bool, typer.Option("--include-seen", help="Keep items the user consumed.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the response as JSON.")] = False,
) -> None:
    """Ask the serving application for a user's recommendations."""
    import requests

    from serving.deploy import base_url

    settings = load_settings()
    body: dict[str, str | int | bool] = {"user_id": user, "k": k, "exclude_seen": not include_seen}
    try:
        response = requests.post(f"{base_url(settings)}/recommend", json=body, timeout=30)
    except requests.RequestException as error:
        console.print(f"[red]serving at {base_url(settings)} does not answer[/red] ({error.__class__.__name__})")
        raise typer.Exit(1) from error
    if response.status_code != 200:
        console.print(f"[red]{response.status_code}[/red] {response.text[:500]}")
        raise typer.Exit(1)
    answer = response.json()
    if as_json:
        print(json.dumps(answer))
        return
    lineage = answer["lineage"]
    history = lineage["history"]
    kind = "popular items (cold start)" if answer["cold_start"] else f"from {history['events']} events of history"
    table = Table(title=f"recommendations for {user}: {kind}")
    table.add_column("#", justify="right")
    table.add_column("item")
    table.add_column("score", justify="right")
    for rank, item in enumerate(answer["items"], start=1):
        table.add_row(str(rank), item["item_id"], f"{item['score']:.4f}")
    console.print(table)
    versions = ", ".join(f"{name} v{version}" for name, version in lineage["model_version"].items())
    where = f"partition {history['partition']} offset {history['offset']}" if history["source"] == "online" else "-"
    console.print(f"model: {versions}; history: {history['source']} ({where}); features {lineage['feature_versions']}")


def promote(
    version: Annotated[str, typer.Option("--version", help="The registered version to serve.")],
    model: Annotated[str | None, typer.Option(help="Registered model; default the retrieval model.")] = None,
) -> None:
    """Point the serving alias at a version: every replica swaps to it without a failed request."""
    from serving.registry import promote as move_alias

    settings = load_settings()
    before = move_alias(settings, version, model)
    name = model or settings.mlflow.registered_model
    console.print(f"{name}@{settings.serve.model_alias}: {before or '(none)'} -> {version}")


def rollback(
    model: Annotated[str | None, typer.Option(help="Registered model; default the retrieval model.")] = None,
) -> None:
    """Move the serving alias back to the version promoted before the current one, and drop the
    model deltas of the version rolled back from (replicas then serve the previous version)."""
    from serving.registry import rollback as move_back
    from serving.registry import served_version
    from training.streaming.deltas import MODEL_DELTAS_TABLE, ModelDeltaTable

    settings = load_settings()
    name = model or settings.mlflow.registered_model
    current = served_version(settings, name)
    previous = move_back(settings, model)
    console.print(f"{name}@{settings.serve.model_alias} -> {previous}")
    if current is not None:  # after the alias moved: replicas leave the version, then its deltas go
        dropped = ModelDeltaTable(settings.table_uri(MODEL_DELTAS_TABLE)).drop(name, int(current))
        console.print(f"dropped {dropped} model deltas of version {current}")

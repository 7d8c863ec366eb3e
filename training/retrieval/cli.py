"""`streamrec train` and `streamrec evaluate`: the retrieval models (HSTU, SASRec, FuXi-alpha, LRURec,
BERT4Rec, popularity)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args

import typer
from rich.table import Table

from infra.cli import load_settings
from infra.console import make_console
from infra.model_options import ModelOptions, merge
from training.common.config import EncoderKind, nest_table_fields
from training.common.outcome import run_outcome
from training.retrieval.config import TrainConfig

if TYPE_CHECKING:
    from infra.settings import Settings

console = make_console()


# The documented short names of TrainConfig fields stay options next to the fields' own names.
TRAIN_ALIASES = {"encoder.num_blocks": "--blocks", "encoder.num_heads": "--heads", "num_negatives": "--negatives"}
TRAIN_OPTIONS = ModelOptions(TrainConfig, exclude={"encoder.kind"}, aliases=TRAIN_ALIASES)  # kind: --model
MODELS = (*get_args(EncoderKind), "popularity")
MODEL_CHOICES = f"{', '.join(MODELS[:-1])} or {MODELS[-1]}"


def _metrics_table(title: str, metrics: dict[str, float]) -> Table:
    """Rows = splits (val, test, ...), columns = metrics."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        split, _, name = key.partition("_")
        if split == "best":
            split, _, name = name.partition("_")
        rows.setdefault(split, {})[name] = value
    columns = list(dict.fromkeys(name for row in rows.values() for name in row))
    table = Table(title=title)
    table.add_column("split")
    for name in columns:
        table.add_column(name, justify="right")
    for split, row in rows.items():
        table.add_row(split, *(f"{row[name]:.4f}" if name in row else "-" for name in columns))
    return table


def train(
    overrides: dict[str, Any],
    model: Annotated[str, typer.Option(help=f"{MODEL_CHOICES} (the baseline, no Ray).")] = "hstu",
    workers: Annotated[int | None, typer.Option(help="Ray Train workers; default STREAMREC_TRAIN_WORKERS.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML or JSON TrainConfig; options given on the command line win.")
    ] = None,
    resume: Annotated[
        str | None, typer.Option(help="Continue the run with this name from its last checkpoint.")
    ] = None,
    warm_start: Annotated[
        str | None, typer.Option(help="Start from this registered model version (or 'latest').")
    ] = None,
    matryoshka_dims: Annotated[
        str | None,
        typer.Option(
            help="Matryoshka item embeddings: comma-separated, strictly increasing prefix widths below --dim "
            "(e.g. 16,32), each trained to rank (fMRLRec's nested-prefix loss)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="Run the follow job instead: learn from new silver/events rows and publish model deltas until "
            "Ctrl-C or SIGTERM (docs/training.md, 'The follow loop').",
        ),
    ] = False,
    base_version: Annotated[
        int | None,
        typer.Option(help="--follow: the registered version to start from; default the serving alias's version."),
    ] = None,
    publish_every: Annotated[float, typer.Option(help="--follow: seconds between published model deltas.")] = 30.0,
) -> None:
    """Train a sequential encoder (--model) on Ray Train (sharded item table), log to MLflow, register the model.

    Every other option is a TrainConfig field (encoder fields included); see docs/training.md."""
    from training.common import tracking
    from training.retrieval.popularity import train_popularity
    from training.retrieval.runner import train as run_training

    if follow or base_version is not None:
        _follow(follow, config, overrides, base_version, publish_every,
                {"--workers": workers, "--resume": resume, "--warm-start": warm_start,
                 "--matryoshka-dims": matryoshka_dims, "--json": as_json or None})  # fmt: skip
        return
    if model not in MODELS:
        console.print(f"[red]--model must be {MODEL_CHOICES}, not {model!r}[/red]")
        raise typer.Exit(2)
    if matryoshka_dims is not None:
        overrides = merge(overrides, {"encoder": {"matryoshka_dims": matryoshka_dims}})
    settings = load_settings()
    try:
        train_config = train_config_from(model, config, overrides)
    except ValueError as error:
        console.print(f"[red]invalid training config:[/red] {error}")
        raise typer.Exit(2) from error

    if model == "popularity":
        outcome = run_outcome("training", model, lambda: train_popularity(settings, train_config, log=console.print))
    else:
        outcome = run_outcome(
            "training",
            train_config.encoder.kind,
            lambda: run_training(
                settings, train_config, workers=workers, resume=resume, warm_start=warm_start, log=console.print
            ),
        )
    if as_json:
        print(json.dumps(outcome))
        return
    console.print(_metrics_table(f"{outcome['model']} metrics", outcome["metrics"]))
    if "model_version" in outcome:
        console.print(
            f"run {outcome['run_name']} -> {settings.mlflow.registered_model} version {outcome['model_version']} "
            f"(best epoch {outcome['best_epoch']}); MLflow: {tracking.ui_url(settings, outcome['run_id'])}"
        )


def _follow(
    follow: bool,
    config: Path | None,
    overrides: dict[str, Any],
    base_version: int | None,
    publish_every: float,
    others: dict[str, object],
) -> None:
    """`streamrec train --follow`: the options it takes checked, then the follow loop until stopped."""
    import yaml

    problem = ""
    if not follow:
        problem = "--base-version goes with --follow"
    elif not publish_every > 0:
        problem = f"--publish-every must be a positive number of seconds, not {publish_every:g}"
    elif base_version is not None and base_version < 1:
        problem = f"--base-version must be a registered version (1, 2, ...), not {base_version}"
    elif given := [name for name, value in others.items() if value is not None]:
        problem = f"{', '.join(given)} do(es) not apply to --follow"
    fields = merge(nest_table_fields(yaml.safe_load(config.read_text()) if config else {}), overrides)
    if not problem and "encoder" in fields:
        problem = "encoder options do not apply to --follow: it trains the base version's encoder"
    if not problem:
        try:
            TrainConfig.model_validate(fields)
        except ValueError as error:
            problem = f"invalid training config: {error}"
    if problem:
        console.print(f"[red]{problem}[/red]")
        raise typer.Exit(2)
    from infra.errors import StreamrecError
    from training.streaming.deltas import ModelDeltaError
    from training.streaming.follow import follow as run_follow

    settings = load_settings()
    try:
        run_follow(settings, fields, base_version, publish_every, log=console.print)
    except (FileNotFoundError, LookupError, ValueError, ModelDeltaError, StreamrecError) as error:
        console.print(f"[red]the follow job stopped:[/red] {error}")
        raise typer.Exit(1) from error


def evaluate(
    version: Annotated[str, typer.Argument(help="Registered model version, or 'latest'.")] = "latest",
    split: Annotated[str, typer.Option(help="test or validation.")] = "test",
    latest_features: Annotated[
        bool, typer.Option("--latest-features", help="Read the newest feature versions, not the model's.")
    ] = False,
    sampled: Annotated[bool, typer.Option("--sampled", help="Rank against 100 random negatives.")] = False,
    window_start: Annotated[
        str | None,
        typer.Option(
            help="Time-ordered evaluation: the window starts after this time (epoch ms or ISO-8601, UTC), or "
            "'latest' for the window that ends at the newest event. Needs --window; reads the newest features."
        ),
    ] = None,
    window: Annotated[str | None, typer.Option(help="Length of the window: 1h, 90m, 2d or ms.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Evaluate a registered retrieval model version on a split (full catalogue by default), or
    time-ordered on the positive events of a window (--window-start, --window; docs/training.md)."""
    from training.retrieval.version_eval import evaluate_version

    settings = load_settings()
    if (window_start is None) != (window is None):
        console.print("[red]--window-start and --window go together[/red]")
        raise typer.Exit(2)
    if window_start is not None and window is not None:
        _evaluate_window(settings, version, window_start, window, as_json)
        return
    if split not in ("test", "validation"):
        console.print("[red]--split must be test or validation[/red]")
        raise typer.Exit(2)
    try:
        metrics, versions = evaluate_version(settings, version, split, latest_features=latest_features, sampled=sampled)
    except (FileNotFoundError, LookupError, ValueError) as error:
        console.print(f"[red]evaluation failed:[/red] {error}")
        raise typer.Exit(1) from error
    if as_json:
        print(json.dumps({"version": version, "features": versions, "metrics": metrics}))
        return
    console.print(
        _metrics_table(f"{settings.mlflow.registered_model} {version} on {split} (features {versions})", metrics)
    )


def _evaluate_window(settings: Settings, version: str, start: str, length: str, as_json: bool) -> None:
    """`streamrec evaluate --window-start T --window W`: time-ordered metrics, logged to the version's run."""
    from training.retrieval.prequential import parse_duration_ms, parse_time_ms
    from training.retrieval.version_eval import evaluate_version_window, log_window

    try:
        start_ms = None if start == "latest" else parse_time_ms(start)
        result, versions = evaluate_version_window(settings, version, start_ms, parse_duration_ms(length))
    except (FileNotFoundError, LookupError, ValueError) as error:
        console.print(f"[red]evaluation failed:[/red] {error}")
        raise typer.Exit(1) from error
    if result.empty:
        console.print(f"[red]nothing to evaluate:[/red] {result.describe()}")
        raise typer.Exit(1)
    log_window(settings, version, result, versions)
    if as_json:
        window = {"start_ms": result.window.start_ms, "length_ms": result.window.length_ms}
        print(json.dumps({"version": version, "features": versions, "window": window, "metrics": result.metrics}))
        return
    table = Table(title=f"{settings.mlflow.registered_model} {version}: {result.describe()} (features {versions})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)


def train_config_from(model: str, config: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of ``streamrec train``: the ``config`` file's fields, the given options on
    top, the encoder kind from ``model`` (raises ValueError when the result is invalid)."""
    import yaml

    # The file may name the table's fields at the top level; the options name them in ``table``.
    fields = merge(nest_table_fields(yaml.safe_load(config.read_text()) if config else {}), overrides)
    if model != "popularity":
        fields["encoder"] = {**fields.get("encoder", {}), "kind": model}
    return TrainConfig.model_validate(fields)

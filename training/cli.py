"""`streamrec train` and `streamrec evaluate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def register(app: typer.Typer) -> None:
    """Add the training commands to the streamrec CLI."""
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    from training.ranking_cli import train_ranking  # multi-task ranking (docs/ranking.md)

    app.command("train-ranking")(train_ranking)


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
    model: Annotated[str, typer.Option(help="hstu, sasrec or popularity (the baseline, no Ray).")] = "hstu",
    workers: Annotated[int | None, typer.Option(help="Ray Train workers; default STREAMREC_TRAIN_WORKERS.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Most epochs (early stopping may end sooner).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sequences per batch on each worker.")] = None,
    dim: Annotated[int | None, typer.Option(help="Embedding width.")] = None,
    blocks: Annotated[int | None, typer.Option(help="Attention blocks.")] = None,
    heads: Annotated[int | None, typer.Option(help="Attention heads.")] = None,
    max_len: Annotated[int | None, typer.Option(help="History length the encoder reads.")] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout rate.")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate of the dense parameters.")] = None,
    negatives: Annotated[int | None, typer.Option(help="Uniform negatives per batch.")] = None,
    in_batch_negatives: Annotated[int | None, typer.Option(help="Negatives drawn from the batch's targets.")] = None,
    embedding_optimizer: Annotated[
        str | None, typer.Option(help="Item-table optimizer: auto, adam (GPU), rowwise_adagrad, adagrad, sgd.")
    ] = None,
    embedding_lr: Annotated[float | None, typer.Option(help="Item-table learning rate.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Softmax temperature.")] = None,
    ntr_weight: Annotated[float | None, typer.Option(help="Weight of the not-to-recommend term; 0 disables.")] = None,
    sharding: Annotated[str | None, typer.Option(help="row_wise or table_wise sharding of the item table.")] = None,
    sampled_eval: Annotated[bool, typer.Option("--sampled-eval", help="Rank against 100 random negatives.")] = False,
    patience: Annotated[int | None, typer.Option(help="Early stopping patience in epochs; 0 = never.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML or JSON TrainConfig; options given on the command line win.")
    ] = None,
    resume: Annotated[
        str | None, typer.Option(help="Continue the run with this name from its last checkpoint.")
    ] = None,
    warm_start: Annotated[
        str | None, typer.Option(help="Start from this registered model version (or 'latest').")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Train HSTU or SASRec on Ray Train (sharded item table), log to MLflow, register the model."""
    import yaml

    from training.config import EncoderConfig, TrainConfig
    from training.errors import TrainingError
    from training.popularity import train_popularity
    from training.runner import train as run_training

    settings = _settings()
    base = yaml.safe_load(config.read_text()) if config else {}
    given = _given(dim=dim, num_blocks=blocks, num_heads=heads, max_len=max_len, dropout=dropout)
    encoder = {**base.pop("encoder", {}), **given}
    if model != "popularity":
        encoder["kind"] = model
    overrides = _given(
        epochs=epochs, batch_size=batch_size, lr=lr, num_negatives=negatives, in_batch_negatives=in_batch_negatives,
        embedding_optimizer=embedding_optimizer, embedding_lr=embedding_lr, temperature=temperature,
        ntr_weight=ntr_weight, sharding=sharding, patience=patience, seed=seed,
    )  # fmt: skip
    if sampled_eval:
        overrides["sampled_eval"] = True
    try:
        train_config = TrainConfig(**{**base, **overrides}, encoder=EncoderConfig(**encoder))
    except ValueError as error:
        console.print(f"[red]invalid training config:[/red] {error}")
        raise typer.Exit(2) from error

    outcome: dict[str, Any]
    try:
        if model == "popularity":
            metrics = train_popularity(settings, train_config, log=console.print)
            outcome = {"model": "popularity", "metrics": metrics}
        else:
            result = run_training(
                settings, train_config, workers=workers, resume=resume, warm_start=warm_start, log=console.print
            )
            metrics = result.metrics
            outcome = {
                "model": train_config.encoder.kind,
                "run_name": result.run_name,
                "run_id": result.run_id,
                "model_version": result.model_version,
                "best_epoch": result.best_epoch,
                "metrics": metrics,
            }
    except (TrainingError, FileNotFoundError, LookupError, ValueError) as error:
        console.print(f"[red]training failed:[/red] {error}")
        raise typer.Exit(1) from error
    if as_json:
        print(json.dumps(outcome))
        return
    console.print(_metrics_table(f"{outcome['model']} metrics", metrics))
    if "model_version" in outcome:
        console.print(
            f"run {outcome['run_name']} -> {settings.registered_model} version {outcome['model_version']} "
            f"(best epoch {outcome['best_epoch']}); MLflow: {settings.mlflow_tracking_uri}"
        )


def evaluate(
    version: Annotated[str, typer.Argument(help="Registered model version, or 'latest'.")] = "latest",
    split: Annotated[str, typer.Option(help="test or validation.")] = "test",
    latest_features: Annotated[
        bool, typer.Option("--latest-features", help="Read the newest feature versions, not the model's.")
    ] = False,
    sampled: Annotated[bool, typer.Option("--sampled", help="Rank against 100 random negatives.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Evaluate a registered retrieval model version on a split (full catalogue by default)."""
    from training.version_eval import evaluate_version

    settings = _settings()
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
    console.print(_metrics_table(f"{settings.registered_model} {version} on {split} (features {versions})", metrics))


def _settings():  # noqa: ANN202
    from infra.settings import get_settings

    try:
        return get_settings()
    except Exception as error:  # pydantic and YAML errors: show them, not a traceback
        console.print(f"[red]invalid settings:[/red] {error}")
        raise typer.Exit(2) from error


def _given(**values: object) -> dict[str, object]:
    """The options that were given (not None)."""
    return {key: value for key, value in values.items() if value is not None}

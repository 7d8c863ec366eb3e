"""`streamrec train-ranking`: the multi-task ranker, its DLRM-style baseline or the popularity baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console()


def train_ranking(
    model: Annotated[
        str, typer.Option(help="ranker (HSTU + target attention), dlrm, or popularity (no Ray).")
    ] = "ranker",
    workers: Annotated[int | None, typer.Option(help="Ray Train workers; default STREAMREC_TRAIN_WORKERS.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Most epochs (early stopping may end sooner).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per batch on each worker.")] = None,
    dim: Annotated[int | None, typer.Option(help="Embedding width.")] = None,
    blocks: Annotated[int | None, typer.Option(help="HSTU blocks.")] = None,
    heads: Annotated[int | None, typer.Option(help="HSTU attention heads.")] = None,
    max_len: Annotated[int | None, typer.Option(help="History events the ranker reads (the last ones).")] = None,
    mixture: Annotated[str | None, typer.Option(help="mmoe or shared_bottom.")] = None,
    experts: Annotated[int | None, typer.Option(help="MMoE experts.")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate of the dense parameters.")] = None,
    task_weight: Annotated[
        list[str] | None, typer.Option(help="TASK=WEIGHT of a task's BCE in the loss (repeatable; default 1 each).")
    ] = None,
    patience: Annotated[int | None, typer.Option(help="Early stopping patience in epochs; 0 = never.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    registered_model: Annotated[
        str | None, typer.Option(help="MLflow registered model (default: the setting registered_ranking_model).")
    ] = None,
    warm_start: Annotated[
        str | None, typer.Option(help="Start from this registered retrieval version (or 'latest'): item rows, HSTU.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML or JSON RankingTrainConfig; options given on the command line win.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Train a multi-task ranker on features/ranking_examples (Ray Train, sharded item table),
    log it to MLflow and register it as streamrec-ranking (`features build --ranking` first)."""
    import yaml

    from infra.settings import get_settings
    from training.errors import TrainingError
    from training.ranking_config import RankerConfig, RankingTrainConfig
    from training.ranking_runner import ranking_model_name, train_ranking_popularity
    from training.ranking_runner import train_ranking as run_ranking

    if model not in ("ranker", "dlrm", "popularity"):
        console.print(f"[red]--model must be ranker, dlrm or popularity, not {model!r}[/red]")
        raise typer.Exit(2)
    settings = get_settings()
    base = yaml.safe_load(config.read_text()) if config else {}
    model_fields = dict(base.pop("model", {}))
    encoder = {
        **model_fields.pop("encoder", {}),
        **_given(dim=dim, num_blocks=blocks, num_heads=heads, max_len=max_len),
    }
    model_fields.update(_given(mixture=mixture, experts=experts))
    if model != "popularity":
        model_fields["kind"] = model
    overrides = _given(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed,
                       registered_model=registered_model, warm_start=warm_start)  # fmt: skip
    try:
        if task_weight:
            overrides["task_weights"] = {
                name: float(value) for name, _, value in (w.partition("=") for w in task_weight)
            }
        ranker = RankerConfig(**{**model_fields, "encoder": {**RankerConfig().encoder.model_dump(), **encoder}})
        train_config = RankingTrainConfig(**{**base, **overrides}, model=ranker)
    except ValueError as error:
        console.print(f"[red]invalid ranking config:[/red] {error}")
        raise typer.Exit(2) from error

    outcome: dict[str, Any]
    try:
        if model == "popularity":
            metrics = train_ranking_popularity(settings, train_config, log=console.print)
            outcome = {"model": "popularity", "metrics": metrics}
        else:
            result = run_ranking(settings, train_config, workers=workers, log=console.print)
            metrics = result.metrics
            outcome = {
                "model": model,
                "run_name": result.run_name,
                "run_id": result.run_id,
                "model_version": result.model_version,
                "best_epoch": result.best_epoch,
                "metrics": metrics,
            }
    except (TrainingError, FileNotFoundError, LookupError, ValueError) as error:
        console.print(f"[red]ranking training failed:[/red] {error}")
        raise typer.Exit(1) from error
    if as_json:
        print(json.dumps(outcome))
        return
    console.print(_table(outcome["model"], metrics, train_config.model.tasks))
    if "model_version" in outcome:
        console.print(
            f"run {outcome['run_name']} -> {ranking_model_name(settings, train_config)} "
            f"version {outcome['model_version']} "
            f"(best epoch {outcome['best_epoch']})"
        )


def _table(title: str, metrics: dict[str, float], tasks: tuple[str, ...]) -> Any:
    from rich.table import Table

    table = Table(title=f"{title}: AUC / GAUC / logloss per task")
    table.add_column("split")
    for task in tasks:
        table.add_column(task, justify="right")
    for split in ("val", "test"):
        if f"{split}_auc_{tasks[0]}" not in metrics:
            continue
        names = ("auc", "gauc", "logloss")
        cells = [" / ".join(f"{metrics[f'{split}_{name}_{task}']:.4f}" for name in names) for task in tasks]
        table.add_row(split, *cells)
    return table


def _given(**values: object) -> dict[str, object]:
    return {key: value for key, value in values.items() if value is not None}

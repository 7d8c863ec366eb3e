"""`streamrec train-ranking`: the multi-task ranker, its DLRM-style baseline or the popularity baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from infra.cli import load_settings
from infra.console import make_console
from infra.model_options import ModelOptions, merge
from training.common.config import nest_table_fields
from training.common.outcome import run_outcome
from training.ranking.config import RankingTrainConfig

console = make_console()


# As `streamrec train`: the documented short names stay options next to the fields' own names.
RANKING_ALIASES = {
    "model.encoder.num_blocks": "--blocks",
    "model.encoder.num_heads": "--heads",
    "num_negatives": "--negatives",
}
RANKING_OPTIONS = ModelOptions(  # the kinds: --model
    RankingTrainConfig, exclude={"model.kind", "model.encoder.kind"}, aliases=RANKING_ALIASES
)


def train_ranking(
    overrides: dict[str, Any],
    model: Annotated[
        str, typer.Option(help="ranker (HSTU + target attention), dlrm, or popularity (no Ray).")
    ] = "ranker",
    workers: Annotated[int | None, typer.Option(help="Ray Train workers; default STREAMREC_TRAIN_WORKERS.")] = None,
    task_weight: Annotated[
        list[str] | None, typer.Option(help="TASK=WEIGHT of a task's BCE in the loss (repeatable; default 1 each).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML or JSON RankingTrainConfig; options given on the command line win.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Train a multi-task ranker on features/ranking_examples (Ray Train, sharded item table),
    log it to MLflow and register it as streamrec-ranking (`features build --ranking` first).

    Every other option is a RankingTrainConfig field (ranker and encoder fields included)."""
    from training.ranking.runner import ranking_model_name, train_ranking_popularity
    from training.ranking.runner import train_ranking as run_ranking

    if model not in ("ranker", "dlrm", "popularity"):
        console.print(f"[red]--model must be ranker, dlrm or popularity, not {model!r}[/red]")
        raise typer.Exit(2)
    settings = load_settings()
    try:
        train_config = ranking_config_from(model, config, overrides, task_weight or [])
    except ValueError as error:
        console.print(f"[red]invalid ranking config:[/red] {error}")
        raise typer.Exit(2) from error

    log, what = console.print, "ranking training"
    if model == "popularity":
        outcome = run_outcome(what, model, lambda: train_ranking_popularity(settings, train_config, log=log))
    else:
        outcome = run_outcome(what, model, lambda: run_ranking(settings, train_config, workers=workers, log=log))
    if as_json:
        print(json.dumps(outcome))
        return
    console.print(_table(outcome["model"], outcome["metrics"], train_config.model.tasks))
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


def ranking_config_from(
    model: str, config: Path | None, overrides: dict[str, Any], task_weights: list[str]
) -> RankingTrainConfig:
    """The RankingTrainConfig of ``streamrec train-ranking``: the ``config`` file's fields, the
    given options on top (``task_weights`` as TASK=WEIGHT), the ranker kind from ``model``
    (raises ValueError when invalid)."""
    import yaml

    # The file may name the table's fields at the top level; the options name them in ``table``.
    fields = merge(nest_table_fields(yaml.safe_load(config.read_text()) if config else {}), overrides)
    if model != "popularity":
        fields["model"] = {**fields.get("model", {}), "kind": model}
    if task_weights:
        fields["task_weights"] = {name: float(value) for name, _, value in (w.partition("=") for w in task_weights)}
    return RankingTrainConfig.model_validate(fields)

"""`streamrec sweep`: measure a scaling law on this cluster's data (docs/scaling.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, get_args

import typer

from infra.cli import load_settings
from infra.console import make_console
from training.sweep.spec import ENCODERS, EvalProtocol, SweepError, SweepSpec, parse_spec

console = make_console()

AXIS_OPTIONS = {  # option -> (SweepSpec field, parser of one value)
    "encoders": ("encoders", str),
    "dims": ("dims", int),
    "blocks": ("blocks", int),
    "max_lens": ("max_lens", int),
    "fractions": ("data_fractions", float),
    "seeds": ("seeds", int),
}


def sweep(
    spec_file: Annotated[
        Path | None, typer.Argument(help="YAML or JSON sweep spec (docs/scaling.md); options given here win.")
    ] = None,
    encoders: Annotated[str | None, typer.Option(help=f"Comma-separated encoders: {', '.join(ENCODERS)}.")] = None,
    dims: Annotated[str | None, typer.Option(help="Comma-separated widths, e.g. 16,32,64.")] = None,
    blocks: Annotated[str | None, typer.Option(help="Comma-separated depths (blocks), e.g. 1,2,4.")] = None,
    max_lens: Annotated[str | None, typer.Option(help="Comma-separated history lengths, e.g. 50,200.")] = None,
    fractions: Annotated[
        str | None, typer.Option(help="Comma-separated data fractions in (0, 1] (shares of users), e.g. 0.25,0.5,1.")
    ] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds; every point runs once per seed.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Most epochs per trial (early stopping ends most sooner).")] = None,
    workers: Annotated[int | None, typer.Option(help="Ray Train workers per trial (default 1).")] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(help="Most trials at once (default: as many as the cluster holds).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Name of the MLflow parent run.")] = None,
    protocol: Annotated[
        str | None,
        typer.Option(
            help="Whose validation HR/NDCG the laws fit: seen_filtered (default) or all_items (for data whose "
            "users mostly return to items they had); with --report, fits that sweep again under it."
        ),
    ] = None,
    plots: Annotated[Path | None, typer.Option(help="Also write the PNGs to this directory.")] = None,
    resume: Annotated[
        str | None, typer.Option(help="Continue the sweep with this MLflow parent run id; finished trials are kept.")
    ] = None,
    report: Annotated[
        str | None, typer.Option(help="Print the trials and fitted laws of the sweep with this parent run id.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and check it fits; run nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Train a grid of model and data sizes as Ray Tune trials, log them under one MLflow parent
    run, and fit scaling laws (loss, compute and the Performance Law) to them."""
    from training.sweep import report as show
    from training.sweep.runner import prepare_sweep, report_sweep, run_sweep

    axes = {"encoders": encoders, "dims": dims, "blocks": blocks, "max_lens": max_lens, "fractions": fractions,
            "seeds": seeds}  # fmt: skip
    spec_given = spec_file is not None or any(
        value is not None for value in (*axes.values(), epochs, workers, max_concurrent, name)
    )
    if resume and report:
        _fail("give --resume or --report, not both")
    if (resume or report) and spec_given:
        _fail("--resume and --report read the sweep's own spec from its parent run: give no spec or grid options")
    if resume and protocol is not None:
        _fail("--resume runs the sweep's own spec (its protocol included); `--report RUN --protocol P` refits it")
    settings = load_settings()
    try:
        if report:
            if protocol not in (None, *get_args(EvalProtocol)):
                _fail(f"--protocol must be seen_filtered or all_items, not {protocol!r}")
            outcome = report_sweep(settings, report, plots, protocol)
        else:
            spec = None if resume else spec_from(spec_file, axes, epochs, workers, max_concurrent, name, protocol)
            prepared = prepare_sweep(settings, spec, resume=resume)
            console.print(show.plan_table(prepared.plan, prepared.done))
            if dry_run:
                console.print(f"{prepared.plan.concurrency} trial(s) at a time fit this cluster; nothing was run")
                return
            outcome = run_sweep(settings, prepared, plots_dir=plots, log=console.print)
    except SweepError as error:
        console.print(f"[red]sweep failed:[/red] {error}")
        raise typer.Exit(1) from error
    if as_json:
        from training.sweep.runner import fits_document

        print(json.dumps({"parent_run_id": outcome.parent_run_id, "protocol": outcome.protocol, "trials": outcome.rows,
                          "fits": fits_document(outcome.fits), "plots": [str(p) for p in outcome.plots],
                          "failed": outcome.failed}))  # fmt: skip
        return
    _print_outcome(settings, outcome)
    if outcome.failed:
        console.print(f"[red]{len(outcome.failed)} trial(s) failed:[/red] {', '.join(outcome.failed)}; "
                      f"retry them with `streamrec sweep --resume {outcome.parent_run_id}`")  # fmt: skip
        raise typer.Exit(1)


def _print_outcome(settings: Any, outcome: Any) -> None:
    from training.common import tracking
    from training.sweep import report as show
    from training.sweep.runner import group_by_encoder

    console.print(show.trial_table(outcome.rows))
    console.print(show.fit_table(outcome.fits, outcome.protocol))
    for line in show.doubling_lines(group_by_encoder(outcome.rows), outcome.fits, outcome.protocol):
        console.print(line)
    for path in outcome.plots:
        console.print(f"plot: {path}")
    console.print(f"MLflow parent run: {tracking.ui_url(settings, outcome.parent_run_id)}")


def _fail(message: str) -> None:
    console.print(f"[red]{message}[/red]")
    raise typer.Exit(2)


def spec_from(
    spec_file: Path | None,
    axes: dict[str, str | None],
    epochs: int | None,
    workers: int | None,
    max_concurrent: int | None,
    name: str | None,
    protocol: str | None = None,
) -> SweepSpec:
    """The SweepSpec of ``spec_file`` (YAML or JSON) with the command line's options on top; a
    SweepError for a bad file or value."""
    import yaml

    data: dict[str, Any] = {}
    if spec_file is not None:
        try:
            data = yaml.safe_load(spec_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise SweepError(f"cannot read the sweep spec {spec_file}: {error}") from error
        if not isinstance(data, dict):
            raise SweepError(f"the sweep spec {spec_file} must be a mapping of fields, not {type(data).__name__}")
    for option, text in axes.items():
        if text is not None:
            field, parse = AXIS_OPTIONS[option]
            try:
                data[field] = [parse(part) for part in text.replace(" ", "").split(",") if part]
            except ValueError as error:
                raise SweepError(f"--{option.replace('_', '-')} {text!r}: {error}") from error
    if epochs is not None:
        data["train"] = {**data.get("train", {}), "epochs": epochs}
    for key, value in (
        ("workers", workers),
        ("max_concurrent", max_concurrent),
        ("name", name),
        ("protocol", protocol),
    ):
        if value is not None:
            data[key] = value
    return parse_spec(data)

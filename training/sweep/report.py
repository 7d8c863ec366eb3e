"""How a sweep reads on the console: the plan, the trial table, the fitted laws with their
intervals and held-out error, and what doubling the model, the data or the compute buys."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

from training.sweep.laws import LAWS, Fit, doubling, law_columns
from training.sweep.plan import SweepPlan
from training.sweep.sizing import GIB

TRIAL_COLUMNS = (
    ("N", "non_embedding_params", "{:,.0f}"),
    ("emb", "embedding_params", "{:,.0f}"),
    ("tokens", "train_tokens", "{:,.0f}"),
    ("ApEn", "data_apen", "{:.3f}"),
    ("epochs", "epochs_run", "{:.0f}"),
    ("PFLOPs", "train_flops", "{:.3g}"),
    ("val CE", "val_cross_entropy", "{:.4f}"),
    ("val NDCG@10", "best_val_ndcg_10", "{:.4f}"),
    ("val HR@10", "best_val_hr_10", "{:.4f}"),
    ("val all NDCG@10", "best_val_all_ndcg_10", "{:.4f}"),
    ("test NDCG@10", "test_ndcg_10", "{:.4f}"),
)
INPUT_NAMES = {"n_params_m": "N", "tokens_m": "D", "quality_tokens_m": "D'", "compute_pflops": "C"}


def plan_table(plan: SweepPlan, done: set[str]) -> Table:
    """The trials of a plan: sizes, data and memory, and whether each already finished."""
    table = Table(title=f"sweep plan: {len(plan.trials)} trials over {plan.num_items:,} items")
    for column in ("trial", "key", "N", "emb", "users", "tokens", "ApEn", "memory GiB", "state"):
        table.add_column(column, justify="left" if column in ("trial", "key", "state") else "right")
    for planned in plan.trials:
        trial, size, data = planned.trial, planned.size, planned.data
        table.add_row(
            trial.label, trial.key, f"{size.non_embedding:,}", f"{size.embedding:,}", f"{data.users:,}",
            f"{data.tokens:,}", f"{data.apen:.3f}", f"{planned.memory_bytes / GIB:.1f}",
            "finished" if trial.key in done else "to run",
        )  # fmt: skip
    return table


def trial_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """One row per finished trial: its label, sizes, data, compute and validation/test metrics
    (seen items filtered, and ``all`` for nothing filtered)."""
    table = Table(title=f"{len(rows)} finished trial(s)")
    table.add_column("trial")
    for header, _, _ in TRIAL_COLUMNS:
        table.add_column(header, justify="right")
    for row in sorted(rows, key=lambda r: (r["encoder"], r.get("non_embedding_params", 0), r["data_fraction"])):
        cells = [fmt.format(row[key]) if key in row else "-" for _, key, fmt in TRIAL_COLUMNS]
        table.add_row(str(row["label"]), *cells)
    return table


def fit_table(fits: Mapping[str, list[Fit]], protocol: str = "seen_filtered") -> Table:
    """One row per encoder and law: its constants with 95% intervals, fit error and held-out error."""
    table = Table(
        title=f"fitted laws, validation metrics {protocol} (95% intervals; held-out: fitted without the largest, "
        "predicting it)"
    )
    for column in ("encoder", "law", "constants", "trials", "rmse", "held-out error"):
        table.add_column(column)
    for encoder, encoder_fits in fits.items():
        for fit in encoder_fits:
            if fit.skipped:
                table.add_row(encoder, fit.law, f"not fitted: {fit.skipped}", str(fit.trials), "-", "-")
                continue
            constants = "\n".join(_constant(c.name, c.value, c.low, c.high) for c in fit.constants)
            held_out = (
                f"{fit.held_out.mean_abs_rel_error:.1%} on {fit.held_out.trials}" if fit.held_out else "n/a (too few)"
            )
            table.add_row(encoder, f"{fit.law}\n{fit.formula}", constants, str(fit.trials), f"{fit.rmse:.4g}", held_out)
    return table


def _constant(name: str, value: float, low: float, high: float) -> str:
    interval = f"[{low:.4g}, {high:.4g}]" if math.isfinite(low) else "[unbounded]"
    return f"{name} = {value:.4g} {interval}"


def doubling_lines(
    rows_by_encoder: Mapping[str, Sequence[Mapping[str, Any]]],
    fits: Mapping[str, list[Fit]],
    protocol: str = "seen_filtered",
) -> list[str]:
    """What each fitted law says doubling N, D, D' or C buys at the sweep's largest trial."""
    lines = []
    laws = {law.name: law for law in LAWS}
    for encoder, encoder_fits in fits.items():
        columns = law_columns(rows_by_encoder[encoder], protocol)
        largest = int(max(range(len(rows_by_encoder[encoder])), key=lambda i: (columns["n_params_m"][i],
                                                                              columns["tokens_m"][i])))  # fmt: skip
        for fit in encoder_fits:
            if fit.skipped:
                continue
            law = laws[fit.law]
            at = {name: float(columns[name][largest]) for name in law.inputs}
            effects = doubling(law, fit, at)
            changes = "; ".join(
                f"doubling {INPUT_NAMES[name]}: {before:.4f} -> {after:.4f} ({after - before:+.4f})"
                for name, (before, after) in effects.items()
            )
            lines.append(f"{encoder} {law.target} at the largest trial ({_at(at)}): {changes}")
    return lines


def _at(at: dict[str, float]) -> str:
    units = {"n_params_m": "M", "tokens_m": "M", "quality_tokens_m": "M", "compute_pflops": " PFLOPs"}
    return ", ".join(f"{INPUT_NAMES[name]} = {value:.3g}{units[name]}" for name, value in at.items())

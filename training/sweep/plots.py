"""The sweep's PNGs: one per law, one panel per encoder, trials as points and the fitted law as
lines (logged to the MLflow parent run and saved where the caller asks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.sweep.laws import COMPUTE_LAW, LOSS_LAW, Fit, Law, law_columns, performance_law, predict

PLOTS = ("scaling_loss.png", "scaling_compute.png", "scaling_performance.png")


def plot_sweep(
    rows_by_encoder: Mapping[str, Sequence[Mapping[str, Any]]],
    fits: Mapping[str, list[Fit]],
    directory: Path,
    protocol: str = "seen_filtered",
) -> list[Path]:
    """Write PLOTS to ``directory`` (created if missing), metrics under ``protocol``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    encoders = sorted(rows_by_encoder)
    paths = []
    for name, draw in zip(PLOTS, (_loss_panel, _compute_panel, _performance_panel), strict=True):
        figure, axes = plt.subplots(1, len(encoders), figsize=(5.5 * len(encoders), 4.2), squeeze=False)
        for axis, encoder in zip(axes[0], encoders, strict=True):
            columns = law_columns(rows_by_encoder[encoder], protocol)
            draw(axis, f"{encoder} ({protocol})", columns, {fit.law: fit for fit in fits[encoder]})
        figure.tight_layout()
        path = directory / name
        figure.savefig(path, dpi=100)
        plt.close(figure)
        paths.append(path)
    return paths


def _fitted(fits: dict[str, Fit], law: Law) -> Fit | None:
    fit = fits.get(law.name)
    return fit if fit is not None and not fit.skipped else None


def _loss_panel(axis: object, encoder: str, columns: dict[str, np.ndarray], fits: dict[str, Fit]) -> None:
    """Validation cross-entropy against N, a colour per data size, the fitted L(N, D) at each."""
    n, d, loss = columns["n_params_m"], columns["tokens_m"], columns["val_cross_entropy"]
    fit = _fitted(fits, LOSS_LAW)
    for tokens in np.unique(d[np.isfinite(d)]):
        here = np.isclose(d, tokens)
        points = axis.scatter(n[here], loss[here], label=f"D = {tokens:.3g}M tokens")  # type: ignore[attr-defined]
        if fit is not None:
            grid = np.geomspace(n[here].min(), n[here].max() * 2, 50)
            line = [predict(LOSS_LAW, fit, {"n_params_m": value, "tokens_m": tokens}) for value in grid]
            axis.plot(grid, line, color=points.get_facecolor()[0])  # type: ignore[attr-defined]
    axis.set(xscale="log", xlabel="non-embedding parameters N (M)", ylabel="val cross-entropy (nats)",  # type: ignore[attr-defined]
             title=_title(encoder, "loss", fit))  # fmt: skip
    axis.legend(fontsize=7)  # type: ignore[attr-defined]


def _compute_panel(axis: object, encoder: str, columns: dict[str, np.ndarray], fits: dict[str, Fit]) -> None:
    """NDCG@10 against training compute (log-log), the fitted power law over the range."""
    compute, ndcg = columns["compute_pflops"], columns["val_ndcg_10"]
    shown = ndcg > 0  # a log axis has no place for a model that hit nothing
    axis.scatter(compute[shown], ndcg[shown], label="trials")  # type: ignore[attr-defined]
    fit = _fitted(fits, COMPUTE_LAW)
    if fit is not None and np.isfinite(compute).any():
        grid = np.geomspace(np.nanmin(compute), np.nanmax(compute) * 2, 50)
        line = [predict(COMPUTE_LAW, fit, {"compute_pflops": value}) for value in grid]
        axis.plot(grid, line, color="black", label=f"a*C^b, b = {fit.value('b'):.3f}")  # type: ignore[attr-defined]
    axis.set(xscale="log", yscale="log", xlabel="training compute C (PFLOPs)", ylabel="val NDCG@10",  # type: ignore[attr-defined]
             title=_title(encoder, "compute", fit))  # fmt: skip
    axis.legend(fontsize=7)  # type: ignore[attr-defined]


def _performance_panel(axis: object, encoder: str, columns: dict[str, np.ndarray], fits: dict[str, Fit]) -> None:
    """Observed against predicted HR@10 and NDCG@10 (the Performance Law); the diagonal is exact."""
    top = 0.0
    for metric in ("hr_10", "ndcg_10"):
        law = performance_law(metric)
        fit = _fitted(fits, law)
        if fit is None:
            continue
        observed = columns[law.target]
        predicted = [
            predict(law, fit, {"n_params_m": n, "quality_tokens_m": q})
            for n, q in zip(columns["n_params_m"], columns["quality_tokens_m"], strict=True)
        ]
        axis.scatter(predicted, observed, label=f"{metric} (held-out error {_held_out(fit)})")  # type: ignore[attr-defined]
        top = max(top, float(np.nanmax(observed)), float(np.nanmax(predicted)))
    if top:
        axis.plot([0, top], [0, top], color="grey", linewidth=1)  # type: ignore[attr-defined]
        axis.legend(fontsize=7)  # type: ignore[attr-defined]
    axis.set(xlabel="predicted (Performance Law)", ylabel="observed (validation)",  # type: ignore[attr-defined]
             title=f"{encoder}: performance law" + ("" if top else " (not fitted)"))  # fmt: skip


def _held_out(fit: Fit) -> str:
    return f"{fit.held_out.mean_abs_rel_error:.1%}" if fit.held_out else "n/a"


def _title(encoder: str, law: str, fit: Fit | None) -> str:
    return f"{encoder}: {law} law" + ("" if fit is not None else " (not fitted)")

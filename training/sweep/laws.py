"""The scaling and performance laws a sweep fits, with confidence intervals and held-out error.

Three laws, each fitted per encoder by least squares (``scipy.optimize.curve_fit``, several
starting points, the best kept):

* ``loss``: validation cross-entropy over the full catalogue L(N, D) = E + A N^-alpha + B D^-beta,
  N the non-embedding parameters and D the training tokens (Hoffmann et al. 2022's form);
* ``compute``: validation NDCG@10 = a C^b against training FLOPs C, fitted in log space on the
  compute-efficient frontier (the trials no cheaper trial beats) when it has enough trials;
* ``performance_hr_10`` / ``performance_ndcg_10``: the Performance Law of Shen et al. (2024,
  "Predictive Models in Sequential Recommendations: Bridging Performance Laws with Data Quality
  Insights", arXiv:2412.00430), which fits HR and NDCG rather than loss against model size and a
  data term that weighs tokens by their approximate entropy, D' = tokens x ApEn. Written here
  as a saturating power law in both, P = P_max - A N^-alpha - B D'^-beta; the history length
  enters through D' (histories are cut to max_len, so a longer max_len reads more tokens).

The validation metrics are those of the sweep's protocol (``SweepSpec.protocol``): seen items
filtered (``best_val_*``), or all items (``best_val_all_*``).

Units keep the constants readable: N and D in millions, C in PFLOPs (1e15). The 95% interval of
each constant is value +- t(0.975, dof) x its standard error from the fit's covariance. The
held-out error fits the law again without the trials of the largest model (largest compute for
the compute law) and predicts them: the mean absolute relative error of those predictions is
what to expect when the law is used to plan the next size up.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

Function = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Law:
    """A law's form: the columns it reads and fits, its function, starting points and bounds."""

    name: str
    formula: str
    inputs: tuple[str, ...]
    target: str
    parameters: tuple[str, ...]
    function: Function  # function(inputs (k, n), *parameters) -> (n,) predictions
    starts: Callable[[np.ndarray], list[list[float]]]  # starting parameters from the targets
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    held_out_by: str  # the input whose largest value the held-out check predicts
    log_space: bool = False  # fit log(target): a pure power law, relative errors
    frontier: bool = False  # fit the trials no trial with smaller input[0] beats


@dataclass(frozen=True)
class Constant:
    """A fitted constant and its 95% confidence interval (nan when the fit cannot bound it)."""

    name: str
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class HeldOut:
    """The law fitted without the largest trials, predicting them."""

    trials: int
    fitted_on: int
    mean_abs_rel_error: float
    max_abs_rel_error: float


@dataclass(frozen=True)
class Fit:
    """A law fitted to a sweep's trials, or why it was not."""

    law: str
    formula: str
    trials: int
    constants: list[Constant] = field(default_factory=list)
    rmse: float = math.nan
    held_out: HeldOut | None = None
    skipped: str = ""  # why there is no fit ("" when there is one)

    def value(self, name: str) -> float:
        """The fitted value of constant ``name``."""
        return next(constant.value for constant in self.constants if constant.name == name)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _loss(x: np.ndarray, e: float, a: float, alpha: float, b: float, beta: float) -> np.ndarray:
    return e + a * x[0] ** -alpha + b * x[1] ** -beta


def _power(x: np.ndarray, a: float, b: float) -> np.ndarray:
    return a * x[0] ** b


def _performance(x: np.ndarray, p_max: float, a: float, alpha: float, b: float, beta: float) -> np.ndarray:
    return p_max - a * x[0] ** -alpha - b * x[1] ** -beta


EXPONENT_STARTS = ((0.1, 0.1), (0.3, 0.3), (0.7, 0.7), (0.1, 0.7), (0.7, 0.1))  # (alpha, beta)
MAX_EVALUATIONS = 600  # per starting point; a law that does not suit the trials stops here


def _loss_starts(y: np.ndarray) -> list[list[float]]:
    spread = max(float(np.ptp(y)), 1e-3)
    return [[0.9 * float(y.min()), spread, a, spread, b] for a, b in EXPONENT_STARTS]


def _power_starts(y: np.ndarray) -> list[list[float]]:
    return [[float(np.median(y)), b] for b in (0.05, 0.2, 0.5)]


def _performance_starts(y: np.ndarray) -> list[list[float]]:
    top = min(1.0, 1.2 * float(y.max()))
    spread = max(float(np.ptp(y)), 1e-3)
    return [[top, spread, a, spread, b] for a, b in EXPONENT_STARTS]


INF = math.inf
LOSS_LAW = Law(
    name="loss",
    formula="L = E + A*N^-alpha + B*D^-beta (L: val cross-entropy, nats; N: non-embedding params, M; D: tokens, M)",
    inputs=("n_params_m", "tokens_m"),
    target="val_cross_entropy",
    parameters=("E", "A", "alpha", "B", "beta"),
    function=_loss,
    starts=_loss_starts,
    lower=(0.0, 0.0, 0.0, 0.0, 0.0),
    upper=(INF, INF, 3.0, INF, 3.0),
    held_out_by="n_params_m",
)
COMPUTE_LAW = Law(
    name="compute",
    formula="NDCG@10 = a*C^b (C: training PFLOPs; fitted on the compute-efficient frontier)",
    inputs=("compute_pflops",),
    target="val_ndcg_10",
    parameters=("a", "b"),
    function=_power,
    starts=_power_starts,
    lower=(0.0, -3.0),
    upper=(INF, 3.0),
    held_out_by="compute_pflops",
    log_space=True,
    frontier=True,
)


def performance_law(metric: str) -> Law:
    """The Performance Law of validation ``metric`` (hr_10 or ndcg_10)."""
    return Law(
        name=f"performance_{metric}",
        formula=f"{metric} = P_max - A*N^-alpha - B*D'^-beta (N: non-embedding params, M; D' = tokens x ApEn, M)",
        inputs=("n_params_m", "quality_tokens_m"),
        target=f"val_{metric}",
        parameters=("P_max", "A", "alpha", "B", "beta"),
        function=_performance,
        starts=_performance_starts,
        lower=(0.0, 0.0, 0.0, 0.0, 0.0),
        upper=(1.0, INF, 3.0, INF, 3.0),
        held_out_by="n_params_m",
    )


LAWS = (LOSS_LAW, COMPUTE_LAW, performance_law("hr_10"), performance_law("ndcg_10"))


PROTOCOL_PREFIXES = {"seen_filtered": "best_val_", "all_items": "best_val_all_"}


def law_columns(rows: Sequence[Mapping[str, Any]], protocol: str = "seen_filtered") -> dict[str, np.ndarray]:
    """The columns the laws read, from trial rows (a trial's MLflow metrics); ``val_ndcg_10``
    and ``val_hr_10`` are the best epoch's under ``protocol`` (seen_filtered or all_items)."""
    prefix = PROTOCOL_PREFIXES[protocol]

    def column(key: str, scale: float = 1.0) -> np.ndarray:
        return np.array([float(row.get(key, math.nan)) * scale for row in rows])

    return {
        "n_params_m": column("non_embedding_params", 1e-6),
        "tokens_m": column("train_tokens", 1e-6),
        "quality_tokens_m": column("train_tokens", 1e-6) * column("data_apen"),
        "compute_pflops": column("train_flops", 1e-15),
        "val_cross_entropy": column("val_cross_entropy"),
        "val_ndcg_10": column(f"{prefix}ndcg_10"),
        "val_hr_10": column(f"{prefix}hr_10"),
    }


def fit_law(law: Law, columns: dict[str, np.ndarray]) -> Fit:
    """``law`` fitted to ``columns`` (``law_columns``), with its held-out check."""
    x = np.vstack([columns[name] for name in law.inputs])
    y = columns[law.target]
    usable = np.isfinite(y) & np.isfinite(x).all(axis=0) & (x > 0).all(axis=0)
    if law.log_space:
        usable &= y > 0
    x, y = x[:, usable], y[usable]
    if law.frontier:
        x, y = _frontier_if_enough(x, y, len(law.parameters) + 1)
    need = len(law.parameters) + 1
    if len(y) < need:
        return Fit(law.name, law.formula, len(y), skipped=f"{len(y)} usable trials, needs at least {need}")
    solved = _least_squares(law, x, y)
    if solved is None:
        return Fit(law.name, law.formula, len(y), skipped="the fit did not converge from any starting point")
    values, covariance = solved
    residuals = law.function(x, *values) - y
    return Fit(
        law=law.name,
        formula=law.formula,
        trials=len(y),
        constants=_constants(law, values, covariance, len(y)),
        rmse=float(np.sqrt(np.mean(residuals**2))),
        held_out=_held_out(law, x, y),
    )


def predict(law: Law, fit: Fit, inputs: dict[str, float]) -> float:
    """The fitted law's prediction at ``inputs`` (its input columns' units)."""
    x = np.array([[inputs[name]] for name in law.inputs], dtype=float)
    return float(law.function(x, *(constant.value for constant in fit.constants))[0])


def _frontier_if_enough(x: np.ndarray, y: np.ndarray, need: int) -> tuple[np.ndarray, np.ndarray]:
    """The trials no cheaper trial (smaller x[0]) matches or beats, when there are ``need`` of them."""
    order = np.argsort(x[0], kind="stable")
    keep, best = [], -math.inf
    for index in order:
        if y[index] > best:
            keep.append(index)
            best = y[index]
    return (x[:, keep], y[keep]) if len(keep) >= need else (x, y)


def _least_squares(law: Law, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The best (parameters, covariance) over the law's starting points; None if none converged."""
    from scipy.optimize import OptimizeWarning, curve_fit

    def model(inputs: np.ndarray, *parameters: float) -> np.ndarray:
        predicted = law.function(inputs, *parameters)
        return np.log(np.maximum(predicted, 1e-300)) if law.log_space else predicted

    target = np.log(y) if law.log_space else y
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for start in law.starts(y):
        start = [min(max(value, low), high) for value, low, high in zip(start, law.lower, law.upper, strict=True)]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                values, covariance = curve_fit(
                    model, x, target, p0=start, bounds=(law.lower, law.upper), maxfev=MAX_EVALUATIONS
                )
        except (RuntimeError, ValueError):
            continue
        error = float(np.sum((model(x, *values) - target) ** 2))
        if np.isfinite(error) and (best is None or error < best[0]):
            best = (error, values, covariance)
    return None if best is None else (best[1], best[2])


def _constants(law: Law, values: np.ndarray, covariance: np.ndarray, trials: int) -> list[Constant]:
    from scipy.stats import t

    dof = trials - len(values)
    spread = t.ppf(0.975, dof) * np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    return [
        Constant(name, float(value), float(value - half), float(value + half)) if np.isfinite(half)
        else Constant(name, float(value), math.nan, math.nan)
        for name, value, half in zip(law.parameters, values, spread, strict=True)
    ]  # fmt: skip


def _held_out(law: Law, x: np.ndarray, y: np.ndarray) -> HeldOut | None:
    """Fit without the trials at the largest ``held_out_by`` and predict them; None when the
    rest are too few (or all of one size) to fit."""
    by = x[law.inputs.index(law.held_out_by)]
    largest = np.isclose(by, by.max())
    rest = ~largest
    if rest.sum() < len(law.parameters) + 1 or len(np.unique(by[rest])) < 2:
        return None
    solved = _least_squares(law, x[:, rest], y[rest])
    if solved is None:
        return None
    predicted = law.function(x[:, largest], *solved[0])
    errors = np.abs(predicted - y[largest]) / np.maximum(np.abs(y[largest]), 1e-12)
    return HeldOut(int(largest.sum()), int(rest.sum()), float(errors.mean()), float(errors.max()))


def fit_all(rows: Sequence[Mapping[str, Any]], protocol: str = "seen_filtered") -> list[Fit]:
    """Every law fitted to ``rows`` (trials of one encoder), metrics under ``protocol``."""
    columns = law_columns(rows, protocol)
    return [fit_law(law, columns) for law in LAWS]


def doubling(law: Law, fit: Fit, at: dict[str, float]) -> dict[str, tuple[float, float]]:
    """What doubling each input of ``law`` buys at ``at``: {input: (prediction, doubled prediction)}."""
    base = predict(law, fit, at)
    return {name: (base, predict(law, fit, {**at, name: 2 * at[name]})) for name in law.inputs}

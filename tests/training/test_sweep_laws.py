"""The fitted laws: known constants recovered from synthetic trials, intervals that cover them,
the held-out error, and fits refused when there are too few trials."""

from __future__ import annotations

import numpy as np
import pytest

from training.sweep.laws import COMPUTE_LAW, LOSS_LAW, doubling, fit_law, law_columns, performance_law

SIZES = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]  # non-embedding parameters, millions
TOKENS = [0.5, 1.0, 2.0]  # training tokens, millions


def _rows(noise: float = 0.0, seed: int = 0) -> list[dict[str, float]]:
    """Trials on an exact grid whose loss, NDCG and HR follow known laws (plus Gaussian noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in SIZES:
        for d in TOKENS:
            apen = 0.8
            compute = 6 * n * d * 10  # PFLOPs
            rows.append({
                "non_embedding_params": n * 1e6, "train_tokens": d * 1e6, "data_apen": apen,
                "train_flops": compute * 1e15,
                "val_cross_entropy": 1.5 + 0.8 * n**-0.3 + 0.6 * d**-0.4 + rng.normal(0, noise),
                "best_val_ndcg_10": 0.02 * compute**0.15 * (1 + rng.normal(0, noise)),
                "best_val_hr_10": 0.3 - 0.05 * n**-0.3 - 0.04 * (d * apen) ** -0.5 + rng.normal(0, noise / 10),
            })  # fmt: skip
    return rows


def test_the_loss_law_recovers_its_constants_and_the_intervals_cover_them() -> None:
    fit = fit_law(LOSS_LAW, law_columns(_rows(noise=0.003)))
    truth = {"E": 1.5, "A": 0.8, "alpha": 0.3, "B": 0.6, "beta": 0.4}
    for constant in fit.constants:
        assert constant.value == pytest.approx(truth[constant.name], rel=0.15), constant
        assert constant.low <= truth[constant.name] <= constant.high, constant
    assert fit.trials == 21 and fit.rmse < 0.005
    assert fit.held_out is not None and fit.held_out.trials == 3 and fit.held_out.fitted_on == 18
    assert fit.held_out.mean_abs_rel_error < 0.01  # the largest model predicted from the smaller ones


def test_the_compute_and_performance_laws_recover_their_constants() -> None:
    columns = law_columns(_rows())
    compute = fit_law(COMPUTE_LAW, columns)
    assert compute.value("a") == pytest.approx(0.02, rel=1e-3) and compute.value("b") == pytest.approx(0.15, rel=1e-3)
    hr = fit_law(performance_law("hr_10"), columns)
    for name, value in {"P_max": 0.3, "A": 0.05, "alpha": 0.3, "B": 0.04, "beta": 0.5}.items():
        assert hr.value(name) == pytest.approx(value, rel=1e-2), name
    assert hr.held_out is not None and hr.held_out.mean_abs_rel_error < 1e-3


def test_a_law_that_does_not_suit_the_trials_shows_in_its_held_out_error() -> None:
    # NDCG here grows with compute only, so the Performance Law's N and D' terms cannot carry it as well.
    rows = _rows()
    suited = fit_law(COMPUTE_LAW, law_columns(rows))
    unsuited = fit_law(performance_law("ndcg_10"), law_columns(rows))
    assert suited.held_out is not None and suited.held_out.mean_abs_rel_error < 1e-3
    assert unsuited.skipped or (unsuited.held_out is not None and unsuited.held_out.mean_abs_rel_error > 0.01)


def test_too_few_trials_are_not_fitted_and_say_why() -> None:
    rows = _rows()[:4]
    fit = fit_law(LOSS_LAW, law_columns(rows))
    assert fit.skipped == "4 usable trials, needs at least 6" and not fit.constants
    # Trials of one model size only: no held-out check (nothing smaller to fit on).
    same_size = [row for row in _rows() if row["non_embedding_params"] == 0.1e6]
    assert fit_law(COMPUTE_LAW, law_columns(same_size)).held_out is None


def test_doubling_reads_off_what_a_bigger_model_or_more_data_buys() -> None:
    fit = fit_law(LOSS_LAW, law_columns(_rows()))
    effects = doubling(LOSS_LAW, fit, {"n_params_m": 1.0, "tokens_m": 2.0})
    before, after = effects["n_params_m"]
    assert before == pytest.approx(1.5 + 0.8 + 0.6 * 2**-0.4, rel=1e-4)
    assert after - before == pytest.approx(0.8 * (2**-0.3 - 1), rel=1e-3)  # A N^-alpha shrinks by 2^-alpha
    assert effects["tokens_m"][1] < before


def test_the_protocol_chooses_whose_validation_metrics_the_laws_read() -> None:
    rows = [{"best_val_ndcg_10": 0.0, "best_val_all_ndcg_10": 0.7, "best_val_hr_10": 0.0, "best_val_all_hr_10": 0.9}]
    assert law_columns(rows)["val_ndcg_10"].tolist() == [0.0]  # seen_filtered, the default
    columns = law_columns(rows, "all_items")
    assert columns["val_ndcg_10"].tolist() == [0.7] and columns["val_hr_10"].tolist() == [0.9]

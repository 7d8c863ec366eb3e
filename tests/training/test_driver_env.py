"""The Ray Train settings the driver starts a run's controller with (``training.common.driver``)."""

from __future__ import annotations

import os

import pytest

from training.common.driver import RAY_TRAIN_ENV, ray_train_env


def test_ray_train_env_sets_the_driver_defaults_only_while_a_run_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in RAY_TRAIN_ENV:
        monkeypatch.delenv(key, raising=False)
    with ray_train_env():
        assert {key: os.environ[key] for key in RAY_TRAIN_ENV} == RAY_TRAIN_ENV
    assert not set(RAY_TRAIN_ENV) & set(os.environ)


def test_a_variable_set_by_the_user_wins_and_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in RAY_TRAIN_ENV:
        monkeypatch.delenv(key, raising=False)
    chosen, *others = RAY_TRAIN_ENV
    monkeypatch.setenv(chosen, "the user's")
    with ray_train_env():
        assert os.environ[chosen] == "the user's"
        assert {key: os.environ[key] for key in others} == {key: RAY_TRAIN_ENV[key] for key in others}
    assert os.environ[chosen] == "the user's"
    assert not set(others) & set(os.environ)


def test_the_variables_are_ones_ray_train_passes_to_its_controller() -> None:
    from ray.train.v2._internal.constants import ENV_VARS_TO_PROPAGATE

    assert set(RAY_TRAIN_ENV) <= ENV_VARS_TO_PROPAGATE

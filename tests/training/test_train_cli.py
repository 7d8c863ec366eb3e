"""`streamrec train` and `train-ranking` options come from the config models' fields: the help
lists every scalar field with its default, given options reach the config over a --config file,
bad values exit 2. The training itself is replaced (no Ray, no MLflow)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from clidata import WIDE, training_app
from typer.testing import CliRunner

from infra.model_options import ModelOptions
from training.ranking import runner as ranking_runner
from training.ranking.cli import RANKING_OPTIONS
from training.ranking.config import RankingTrainConfig
from training.retrieval import popularity
from training.retrieval.cli import TRAIN_OPTIONS, train_config_from
from training.retrieval.config import TrainConfig


@pytest.fixture
def app() -> typer.Typer:
    return training_app()


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The configs the popularity baselines were called with (they return no metrics)."""
    configs: list[Any] = []

    def fake(settings: object, config: Any, log: object = None) -> dict[str, float]:
        configs.append(config)
        return {}

    monkeypatch.setattr(popularity, "train_popularity", fake)
    monkeypatch.setattr(ranking_runner, "train_ranking_popularity", fake)
    return configs


def _help_rows(app: typer.Typer, command: str) -> str:
    result = CliRunner().invoke(app, [command, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return re.sub(r"\s+", " ", result.output)


@pytest.mark.parametrize(
    ("command", "options", "defaults"),
    [("train", TRAIN_OPTIONS, TrainConfig()), ("train-ranking", RANKING_OPTIONS, RankingTrainConfig())],
)
def test_help_lists_every_scalar_field_with_its_default(
    app: typer.Typer, command: str, options: ModelOptions, defaults: Any
) -> None:
    shown = _help_rows(app, command)
    for option in options.options:
        default: Any = defaults
        for key in option.path:
            default = getattr(default, key)
        assert option.names[0] in shown, option
        if default is not None:
            assert f"(default: {default})" in shown, option
    fields = {".".join(option.path) for option in options.options}
    assert len(fields) == len(options.options)
    if command == "train":
        assert {"epochs", "encoder.num_blocks", "encoder.dropout", "sampled_eval", "table.sharding"} <= fields
        assert "(default: 200)" in shown and "<row_wise|table_wise>" in shown
        assert "<auto|sampled|sampled_logq|full>" in shown
    else:  # the ranker's encoder defaults, not EncoderConfig's
        assert {"model.mixture", "model.dropout", "model.encoder.dropout", "warm_start"} <= fields
        assert "--encoder-dropout" in shown and "(default: 32)" in shown


def test_given_options_reach_the_train_config_over_the_config_file(
    app: typer.Typer, captured: list[Any], tmp_path: Path
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("epochs: 9\nseed: 4\nencoder:\n  dim: 64\n  max_len: 30\n")
    args = ["train", "--model", "popularity", "--config", str(config), "--epochs", "3", "--blocks", "4",
            "--heads", "2", "--negatives", "7", "--in-batch-negatives", "0", "--embedding-optimizer", "sgd",
            "--ntr-weight", "0", "--sharding", "table_wise", "--sampled-eval", "--no-length-bucketing",
            "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"model": "popularity", "metrics": {}}
    [train_config] = captured
    assert train_config == TrainConfig.model_validate(
        {"epochs": 3, "seed": 4, "num_negatives": 7, "in_batch_negatives": 0, "embedding_optimizer": "sgd",
         "ntr_weight": 0.0, "sharding": "table_wise", "sampled_eval": True, "length_bucketing": False,
         "encoder": {"dim": 64, "max_len": 30, "num_blocks": 4, "num_heads": 2}}
    )  # fmt: skip
    # --model names the encoder kind over the file's; an unchanged run is the defaults.
    config.write_text("encoder:\n  kind: hstu\n")
    assert train_config_from("sasrec", config, {"epochs": 2}).encoder.kind == "sasrec"
    assert train_config_from("hstu", None, {}) == TrainConfig()


def test_given_options_reach_the_ranking_config(app: typer.Typer, captured: list[Any]) -> None:
    args = ["train-ranking", "--model", "popularity", "--dim", "16", "--blocks", "1", "--encoder-dropout", "0.3",
            "--dropout", "0.0", "--mixture", "shared_bottom", "--task-weight", "purchase=3", "--warm-start", "latest",
            "--registered-model", "other", "--epochs", "2", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    [config] = captured
    assert (config.model.encoder.dim, config.model.encoder.num_blocks, config.model.encoder.dropout) == (16, 1, 0.3)
    assert config.model.encoder.max_len == 50  # the ranker's default encoder, not EncoderConfig's
    assert (config.model.dropout, config.model.mixture, config.model.kind) == (0.0, "shared_bottom", "ranker")
    assert (config.task_weights, config.warm_start, config.registered_model) == ({"purchase": 3.0}, "latest", "other")
    assert config.epochs == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--sharding", "diagonal"], "Invalid value for '--sharding'"),
        (["train", "--dim", "50", "--heads", "3"], "invalid training config"),
        (["train", "--epochs", "many"], "Invalid value for '--epochs'"),
        (["train-ranking", "--model", "popularity", "--task-weight", "click=-1"], "invalid ranking config"),
        (["train-ranking", "--model", "gbdt"], "--model must be ranker, dlrm or popularity"),
    ],
)
def test_invalid_values_exit_2_with_the_reason(
    app: typer.Typer, captured: list[Any], args: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, args, env=WIDE)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not captured

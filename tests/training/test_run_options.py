"""One source of run options: every field of TrainConfig and RankingTrainConfig (nested ones
included) can be set from the CLI, from the Dagster training configs and from the demo's
options, and a value the config model rejects fails in each with the model's own reason.
Nothing is trained (the runners are replaced) and no service starts."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, get_args, get_origin

import dagster as dg
import pytest
import typer
from clidata import WIDE, training_app
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from training.common.config import TableConfig
from training.ranking import runner as ranking_runner
from training.ranking.cli import RANKING_OPTIONS, ranking_config_from
from training.ranking.config import RankingTrainConfig
from training.retrieval import runner as retrieval_runner
from training.retrieval.cli import TRAIN_OPTIONS, train_config_from
from training.retrieval.config import TrainConfig
from workflows.assets.training import RankingModelConfig, RetrievalTrainConfig
from workflows.demo import DemoOptions

# Values no rule of the field's type gives (tuples, mappings, values that other fields check).
CHOSEN: dict[str, dict[str, Any]] = {
    "TrainConfig": {
        "betas": (0.8, 0.9),
        "eval_ks": (10, 20),
        "selection_metric": "hr_20",
        "encoder.dim": 64,
        "encoder.matryoshka_dims": (16, 32),
    },
    "RankingTrainConfig": {
        "betas": (0.8, 0.9),
        "model.tasks": ("click", "like"),
        "task_weights": {"like": 2.0},
        "selection_metric": "gauc_like",
        "registered_model": "other-ranking",
        "warm_start": "latest",
        "model.encoder.dim": 16,
        "model.encoder.matryoshka_dims": (4, 8),
    },
}
CLI_KINDS = {"encoder.kind", "model.kind"}  # the commands' --model
DEMO_DECIDES = frozenset({"encoder.kind"})  # the demo trains each retrieval kind


def leaves(model: type[BaseModel], defaults: BaseModel, prefix: str = "") -> dict[str, Any]:
    """{dotted path: default} of every field that is not itself a model."""
    found: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        default = getattr(defaults, name)
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            found.update(leaves(info.annotation, default, f"{prefix}{name}."))
        else:
            found[f"{prefix}{name}"] = default
    return found


def changed(model: type[BaseModel]) -> dict[str, Any]:
    """{dotted path: a valid value other than the default} of every leaf field of ``model``."""
    values = {}
    chosen = CHOSEN[model.__name__]
    for path, default in leaves(model, model()).items():
        annotation = _annotation(model, path)
        if path in chosen:
            value = chosen[path]
        elif get_origin(annotation) is Literal:
            value = next(choice for choice in get_args(annotation) if choice != default)
        elif isinstance(default, bool):
            value = not default
        elif isinstance(default, int):
            value = default + 1
        elif isinstance(default, float):
            value = default / 2 if default else 0.01
        else:
            raise AssertionError(f"no changed value for {model.__name__}.{path} (add it to CHOSEN)")
        assert value != default, path
        values[path] = value
    return values


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """{"encoder.dim": 8} -> {"encoder": {"dim": 8}}."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, name = path.split(".")
        target = tree
        for key in parents:
            target = target.setdefault(key, {})
        target[name] = value
    return tree


def value_at(config: BaseModel, path: str) -> Any:
    for key in path.split("."):
        config = getattr(config, key)
    return config


def _annotation(model: type[BaseModel], path: str) -> Any:
    *parents, name = path.split(".")
    for key in parents:
        model = model.model_fields[key].annotation
    return model.model_fields[name].annotation


def assert_all_set(config: BaseModel, values: dict[str, Any], skip: frozenset[str] = frozenset()) -> None:
    wrong = {path: value_at(config, path) for path, value in values.items() if path not in skip}
    wrong = {path: found for path, found in wrong.items() if found != values[path]}
    assert not wrong, f"fields that did not arrive: {wrong}"


RETRIEVAL = changed(TrainConfig)
RANKING = changed(RankingTrainConfig)


def test_the_changed_values_are_valid_and_cover_nested_fields() -> None:
    assert_all_set(TrainConfig.model_validate(nested(RETRIEVAL)), RETRIEVAL)
    assert_all_set(RankingTrainConfig.model_validate(nested(RANKING)), RANKING)
    assert {"encoder.dim", "encoder.hstu_reference_init", "table.sharding", "betas"} <= RETRIEVAL.keys()
    assert {"model.encoder.max_len", "model.experts", "table.embedding_lr", "task_weights"} <= RANKING.keys()


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> tuple[typer.Typer, list[Any]]:
    """The training commands, with the Ray runners replaced by ones that keep their config."""
    configs: list[Any] = []

    def fake(settings: object, config: Any, **_: object) -> SimpleNamespace:
        configs.append(config)
        return SimpleNamespace(run_name="run", run_id="id", model_version="1", best_epoch=0, metrics={})

    monkeypatch.setattr(retrieval_runner, "train", fake)
    monkeypatch.setattr(ranking_runner, "train_ranking", fake)
    app = training_app()
    return app, configs


@pytest.mark.parametrize(
    ("command", "options", "values"),
    [("train", TRAIN_OPTIONS, RETRIEVAL), ("train-ranking", RANKING_OPTIONS, RANKING)],
)
def test_every_field_is_reachable_from_the_cli(
    app: tuple[typer.Typer, list[Any]], tmp_path: Path, command: str, options: Any, values: dict[str, Any]
) -> None:
    """Scalar fields are options; the kind is --model; the rest (tuples, mappings, the ranker's
    encoder kind) come from the --config file."""
    runner, configs = app
    args = [command, "--json"]
    as_options = {".".join(option.path): option for option in options.options}
    for path, value in values.items():
        option = as_options.get(path)
        if option is None:
            continue
        if isinstance(value, bool):
            args.append(option.names[0] if value else f"--no-{option.names[0].removeprefix('--')}")
        else:
            args += [option.names[0], str(value)]
    args += ["--model", next(values[path] for path in CLI_KINDS if path in values)]
    in_file = {path: value for path, value in values.items() if path not in as_options and path not in CLI_KINDS}
    assert not {path for path in in_file if not isinstance(values[path], (tuple, dict))} - {"model.encoder.kind"}
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(nested(in_file)))
    if command == "train-ranking":  # the repeatable TASK=WEIGHT option, not the file's
        args += ["--task-weight", "like=2"]
    result = CliRunner().invoke(runner, [*args, "--config", str(config_file)], env=WIDE)
    assert result.exit_code == 0, result.output
    [config] = configs
    assert_all_set(config, values)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["train", "--dim", "50", "--heads", "3"], "dim 50 is not divisible by num_heads 3"),
        (["train", "--selection-metric", "auc"], "selection_metric 'auc' is not one of"),
        (["train", "--epochs", "0"], "greater than or equal to 1"),
        (["train", "--loss", "softmax"], "'softmax' is not one of 'auto', 'sampled', 'sampled_logq', 'full'"),
        (["train", "--embedding-optimizer", "adamw"], "'adamw' is not one of 'auto', 'adam', 'rowwise_adagrad'"),
        (["train-ranking", "--selection-metric", "ndcg_10"], "selection_metric must be auc_<task>"),
    ],
)
def test_invalid_values_fail_on_the_cli_with_the_reason(
    app: tuple[typer.Typer, list[Any]], args: list[str], reason: str
) -> None:
    runner, configs = app
    result = CliRunner().invoke(runner, args, env=WIDE)
    assert result.exit_code == 2 and reason in " ".join(result.output.split()), result.output
    assert not configs


def test_every_field_is_reachable_from_the_dagster_configs() -> None:
    options = RetrievalTrainConfig(train=nested(RETRIEVAL), from_scratch=True, workers=3).options()
    assert_all_set(options.config, RETRIEVAL)
    assert (options.from_scratch, options.workers) == (True, 3)
    ranking = RankingModelConfig(train=nested(RANKING), workers=2).options()
    assert_all_set(ranking.config, RANKING)
    assert ranking.workers == 2
    # Unset fields are the packages' own defaults (a round's retrieval run: 5 epochs).
    assert RetrievalTrainConfig().options().config == TrainConfig(epochs=5)
    assert RankingModelConfig().options().config == RankingTrainConfig()


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (RetrievalTrainConfig(train={"encoder": {"num_heads": 3}}), "dim 50 is not divisible by num_heads 3"),
        (RetrievalTrainConfig(train={"epochs": 0}), "greater than or equal to 1"),
        (RetrievalTrainConfig(train={"epoch": 3}), "Extra inputs are not permitted"),
        (RankingModelConfig(train={"task_weights": {"dwell": 1.0}}), "task_weights name tasks the model has no head"),
    ],
)
def test_invalid_values_fail_the_dagster_run_with_the_reason(config: Any, reason: str) -> None:
    with pytest.raises(dg.Failure) as failure:
        config.options()
    assert reason in str(failure.value.description)


def test_every_field_is_reachable_from_the_demo_options() -> None:
    demo = DemoOptions(train=nested(RETRIEVAL), ranking_train=nested(RANKING))
    for kind in ("sasrec", "hstu"):  # the demo trains both kinds
        config = demo.train_config(kind)
        assert_all_set(config, RETRIEVAL, skip=DEMO_DECIDES)
        assert config.encoder.kind == kind
    assert_all_set(demo.ranking_config(), RANKING)
    # Without overrides: the demo's own sizes over the packages' defaults.
    plain = DemoOptions(epochs=4, seed=3, ranking_epochs=1)
    assert plain.train_config("hstu") == TrainConfig(epochs=4, seed=3)
    assert plain.train_config("hstu", epochs=2).epochs == 2
    assert plain.ranking_config() == RankingTrainConfig(epochs=1, seed=3)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"train": {"encoder": {"num_heads": 3}}}, "dim 50 is not divisible by num_heads 3"),
        ({"train": {"sharding": "diagonal"}}, "'row_wise' or 'table_wise'"),
        ({"ranking_train": {"selection_metric": "ndcg_10"}}, "selection_metric must be auc_<task>"),
    ],
)
def test_invalid_values_fail_the_demo_options_with_the_reason(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        DemoOptions(**overrides)


def test_table_fields_keep_their_top_level_names() -> None:
    """Config files, job records and MLflow params name the table's fields at the top level."""
    flat = TrainConfig.model_validate({"embedding_optimizer": "sgd", "embedding_lr": 0.2, "sharding": "table_wise"})
    assert flat == TrainConfig.model_validate(
        {"table": {"embedding_optimizer": "sgd", "embedding_lr": 0.2, "sharding": "table_wise"}}
    )
    assert TrainConfig.model_validate(flat.model_dump(mode="json")) == flat
    params = flat.flat_params()
    assert (params["embedding_optimizer"], params["embedding_lr"], params["sharding"]) == ("sgd", "0.2", "table_wise")
    assert not any(key.startswith("table") for key in params)
    ranking = RankingTrainConfig.model_validate({"embedding_lr": 0.3}).flat_params()
    assert ranking["embedding_lr"] == "0.3" and "table.embedding_lr" not in ranking
    with pytest.raises(ValidationError, match="sharding given both at the top level and in table"):
        TrainConfig.model_validate({"sharding": "table_wise", "table": {"sharding": "row_wise"}})


def test_a_config_files_top_level_table_fields_yield_to_the_options(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("sharding: table_wise\nembedding_lr: 0.2\n")
    options = {"table": {"sharding": "row_wise"}}  # --sharding row_wise
    assert train_config_from("hstu", config, options).table == TableConfig(sharding="row_wise", embedding_lr=0.2)
    ranking = ranking_config_from("ranker", config, {}, [])
    assert ranking.table == TableConfig(sharding="table_wise", embedding_lr=0.2)

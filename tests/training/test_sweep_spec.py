"""The sweep spec: grid expansion, explicit lists, trial keys and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from clidata import WIDE, training_app
from typer.testing import CliRunner

from training.sweep.cli import spec_from
from training.sweep.spec import ENCODERS, SweepError, parse_spec


def test_the_grid_expands_to_every_combination_each_an_ordinary_train_config() -> None:
    spec = parse_spec({"encoders": ["hstu", "sasrec"], "dims": [8, 16], "blocks": [1, 2], "max_lens": [20],
                       "data_fractions": [0.5, 1.0], "seeds": [0], "train": {"epochs": 3, "lr": 0.002}})  # fmt: skip
    trials = spec.trials_to_run()
    assert len(trials) == 2 * 2 * 2 * 1 * 2
    points = {(t.config.encoder.kind, t.config.encoder.dim, t.config.encoder.num_blocks, t.config.data_fraction)
              for t in trials}  # fmt: skip
    assert len(points) == len(trials)
    sasrec = next(t for t in trials if t.config.encoder.kind == "sasrec" and t.config.encoder.dim == 16)
    assert sasrec.config.encoder.ffn_dim == 16  # the feed-forward width follows the trial's width
    assert {t.config.epochs for t in trials} == {3} and {t.config.lr for t in trials} == {0.002}
    assert {t.config.patience for t in trials} == {3}  # the sweep's small default, not TrainConfig's
    assert sorted(t.label for t in trials if t.config.encoder.kind == "sasrec" and t.config.encoder.dim == 16) == [
        "sasrec d16 b1 L20 f0.5", "sasrec d16 b1 L20 f1", "sasrec d16 b2 L20 f0.5", "sasrec d16 b2 L20 f1"
    ]  # fmt: skip


def test_every_registered_encoder_can_be_swept() -> None:
    spec = parse_spec({"encoders": list(ENCODERS), "dims": [8], "blocks": [1], "max_lens": [20],
                       "data_fractions": [1.0]})  # fmt: skip
    assert sorted(t.config.encoder.kind for t in spec.trials_to_run()) == sorted(ENCODERS)
    assert {"hstu", "sasrec", "fuxi", "lrurec", "bert4rec"} <= set(ENCODERS)


def test_an_explicit_list_runs_exactly_its_points() -> None:
    spec = parse_spec({"trials": [{"encoder": "hstu", "dim": 8, "blocks": 1, "max_len": 20},
                                  {"encoder": "sasrec", "dim": 16, "blocks": 2, "max_len": 30, "data_fraction": 0.25,
                                   "seed": 2}]})  # fmt: skip
    assert [t.label for t in spec.trials_to_run()] == ["hstu d8 b1 L20 f1", "sasrec d16 b2 L30 f0.25 s2"]


def test_a_trial_key_names_its_config_whatever_the_order_of_the_spec() -> None:
    forward = parse_spec({"dims": [8, 16], "blocks": [1], "data_fractions": [1.0]}).trials_to_run()
    backward = parse_spec({"dims": [16, 8], "blocks": [1], "data_fractions": [1.0]}).trials_to_run()
    assert {t.key for t in forward} == {t.key for t in backward}
    assert len({t.key for t in forward}) == 2
    other_workers = parse_spec({"dims": [8, 16], "blocks": [1], "data_fractions": [1.0], "workers": 2})
    assert not {t.key for t in other_workers.trials_to_run()} & {t.key for t in forward}


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"dims": []}, "the grid is empty: dims has no values"),
        ({"encoders": [], "seeds": []}, "encoders, seeds has no values"),
        ({"trials": []}, "trials is empty"),
        ({"data_fractions": [0.5, 0.0]}, "data fraction 0 is outside (0, 1]"),
        ({"data_fractions": [1.5]}, "data fraction 1.5 is outside (0, 1]"),
        (
            {"trials": [{"encoder": "hstu", "dim": 8, "blocks": 1, "max_len": 20, "data_fraction": -0.1}]},
            "data fraction -0.1 is outside (0, 1]",
        ),
        ({"encoders": ["hstu", "gru4rec"]}, "unknown encoder 'gru4rec': the registered encoders are hstu, sasrec"),
        (
            {"dims": [8], "trials": [{"encoder": "hstu", "dim": 8, "blocks": 1, "max_len": 20}]},
            "give either the grid (dims) or trials, not both",
        ),
        ({"depth": [1]}, "depth: Extra inputs are not permitted"),
    ],
)
def test_bad_specs_are_refused_with_a_clear_error(spec: dict, says: str) -> None:
    with pytest.raises(SweepError, match="invalid sweep spec") as error:
        parse_spec(spec)
    assert says in str(error.value)


def test_a_trial_train_config_rejects_is_named() -> None:
    with pytest.raises(SweepError, match=r"trial hstu d9 b1 L50 f1: invalid training config: .*not divisible"):
        parse_spec({"dims": [8, 9], "blocks": [1], "data_fractions": [1.0], "train": {"encoder": {"num_heads": 2}}})


def test_a_point_listed_twice_is_refused() -> None:
    point = {"encoder": "hstu", "dim": 8, "blocks": 1, "max_len": 20}
    with pytest.raises(SweepError, match="trial hstu d8 b1 L20 f1 is listed twice"):
        parse_spec({"trials": [point, point]})


def test_command_line_options_override_the_spec_file(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("encoders: [sasrec]\ndims: [8]\ntrain: {epochs: 7, lr: 0.01}\n")
    spec = spec_from(path, {"dims": "16, 32", "fractions": "0.25,1"}, epochs=2, workers=2, max_concurrent=None,
                     name="mine")  # fmt: skip
    assert spec.encoders == ("sasrec",) and spec.dims == (16, 32) and spec.data_fractions == (0.25, 1.0)
    assert spec.train == {"epochs": 2, "lr": 0.01} and spec.workers == 2 and spec.name == "mine"
    with pytest.raises(SweepError, match="--dims 'a,b'"):
        spec_from(None, {"dims": "a,b"}, None, None, None, None)
    path.write_text("- just\n- a list\n")
    with pytest.raises(SweepError, match="must be a mapping"):
        spec_from(path, {}, None, None, None, None)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["sweep", "--dims", "8,0"], "dims.1: Input should be greater than or equal to 2"),
        (["sweep", "--fractions", "0.5,2"], "data fraction 2 is outside (0, 1]"),
        (["sweep", "--encoders", "hstu,gru4rec"], "unknown encoder 'gru4rec'"),
        (["sweep", "--dims", ""], "the grid is empty: dims has no values"),
        (["sweep", "--resume", "abc", "--report", "def"], "give --resume or --report, not both"),
        (["sweep", "--report", "abc", "--dims", "8"], "give no spec or grid options"),
        (["sweep", "--resume", "abc", "--protocol", "all_items"], "`--report RUN --protocol P` refits it"),
        (["sweep", "--protocol", "everything"], "protocol: Input should be 'seen_filtered' or 'all_items'"),
    ],
)
def test_the_command_refuses_bad_input_before_connecting_anywhere(args: list[str], says: str) -> None:
    result = CliRunner().invoke(training_app(), args, env=WIDE)
    assert result.exit_code in (1, 2), result.output
    assert says in " ".join(result.output.split()), result.output

"""Matryoshka item embeddings (--matryoshka-dims): the nested-prefix loss is the mean of the same loss
on each prefix width and the full one (fMRLRec's), the widths are checked at the command line, and
the exported model records them for serving."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from clidata import WIDE, training_app
from typer.testing import CliRunner

from ingestion.schema import ACTION_IDS
from training.common.config import EncoderConfig
from training.common.loss import retrieval_loss
from training.retrieval.cli import train_config_from
from training.retrieval.io import ModelInfo, load_model, save_model
from training.retrieval.model import RetrievalModel

NUM_ITEMS, DIM, DIMS = 12, 8, (2, 4)


def _case() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    table = torch.randn(NUM_ITEMS + 1, DIM, generator=generator)
    items = torch.tensor([[3, 5, 2, 8, 6], [7, 1, 9, 0, 0]])
    actions = [["view", "click", "skip", "view", "like"], ["click", "view", "dislike", "click", "click"]]
    batch = {
        "item_indices": items,
        "action_ids": torch.tensor([[ACTION_IDS[action] for action in row] for row in actions]),
        "lengths": torch.tensor([5, 3]),
        "valid": torch.tensor([True, True]),
    }
    hidden = torch.randn(2, 5, DIM, generator=generator)
    return hidden, table, batch, table[items]


@pytest.mark.parametrize("kind", ["full", "sampled", "sampled_logq"])
@pytest.mark.parametrize("masked", [False, True])
def test_the_nested_loss_is_the_mean_of_the_loss_on_each_prefix(kind: str, masked: bool) -> None:
    hidden, table, batch, history = _case()
    candidates = torch.arange(1, NUM_ITEMS + 1) if kind == "full" else torch.tensor([4, 10, 11])
    mask = torch.tensor([[True, False, True, False, True], [False, True, True, False, False]]) if masked else None
    options = {"temperature": 0.5, "in_batch_negatives": 3, "ntr_weight": 0.3, "kind": kind, "num_items": NUM_ITEMS}

    def loss(width: int, prefix_dims: tuple[int, ...] = ()) -> torch.Tensor:
        generator = torch.Generator().manual_seed(9)  # the same in-batch draws in every call
        return retrieval_loss(
            hidden[..., :width], history[..., :width], batch, candidates, table[candidates][:, :width],
            generator=generator, masked=mask, prefix_dims=prefix_dims, **options,
        ).total  # fmt: skip

    per_prefix = [loss(width) for width in (*DIMS, DIM)]
    assert len({round(value.item(), 6) for value in per_prefix}) == 3  # each width its own loss
    assert loss(DIM, DIMS).item() == pytest.approx(sum(per_prefix).item() / len(per_prefix), rel=1e-6)
    assert loss(DIM, ()).item() == pytest.approx(per_prefix[-1].item(), rel=1e-6)


@pytest.mark.parametrize(
    ("dims", "shown"),
    [("32,16", "32,16"), ("16,50", "16,50"), ("1,8", "1,8"), ("16,16", "16,16")],
)
def test_bad_widths_fail_on_the_command_line_with_the_allowed_values(dims: str, shown: str) -> None:
    app = training_app()
    result = CliRunner().invoke(app, ["train", "--model", "sasrec", "--matryoshka-dims", dims], env=WIDE)
    assert result.exit_code == 2, result.output
    expected = f"matryoshka_dims {shown} must be strictly increasing widths from 2 to 49 (below dim 50)"
    assert expected in " ".join(result.output.split()), result.output


def test_widths_that_are_not_numbers_fail_on_the_command_line() -> None:
    app = training_app()
    result = CliRunner().invoke(app, ["train", "--model", "hstu", "--matryoshka-dims", "16,x"], env=WIDE)
    assert result.exit_code == 2 and "is not a comma-separated list of widths" in " ".join(result.output.split())


def test_the_widths_reach_the_config_mlflow_and_the_exported_model(tmp_path: Path) -> None:
    config = train_config_from("lrurec", None, {"encoder": {"matryoshka_dims": "16, 32", "dim": 64}})
    assert config.encoder.matryoshka_dims == (16, 32)
    assert config.flat_params()["encoder.matryoshka_dims"] == "(16, 32)"
    encoder = EncoderConfig(kind="sasrec", dim=8, matryoshka_dims=(2, 4))
    model = RetrievalModel(encoder, num_items=5)
    directory = save_model(tmp_path / "model", ModelInfo(encoder, 5), model.state_dict())
    loaded, info = load_model(directory)
    assert info.encoder.matryoshka_dims == (2, 4) and loaded.config == encoder

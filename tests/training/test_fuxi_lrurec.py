"""FuXi-alpha and LRURec: shapes and gradients, their channels and switches, the LRU's parallel scan
against its recurrence, one-event steps against encoding the whole history, and bad options at the
command line. (Causality, padding and actions for every encoder: test_encoders.py.)"""

from __future__ import annotations

import math

import pytest
import torch
from clidata import WIDE, training_app
from typer.testing import CliRunner

from training.common.config import EncoderConfig
from training.common.fuxi import FuXiAlpha, fuxi_time_buckets
from training.common.lrurec import LRURec, linear_scan
from training.retrieval.model import RetrievalModel


def _config(kind: str, **fields: object) -> EncoderConfig:
    return EncoderConfig(kind=kind, **{"dim": 16, "num_heads": 2, "max_len": 12, "dropout": 0.0, **fields})


def _model(kind: str, seed: int = 0, **fields: object) -> RetrievalModel:
    torch.manual_seed(seed)
    return RetrievalModel(_config(kind, **fields), num_items=30).eval()


def _batch(length: int = 9, rows: int = 3, seed: int = 1) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    items = torch.randint(1, 31, (rows, length), generator=generator)
    actions = torch.randint(1, 9, (rows, length), generator=generator)
    gaps = torch.randint(0, 86_400_000, (rows, length), generator=generator)
    lengths = torch.tensor([length, length - 2, 1][:rows])
    for row, size in enumerate(lengths.tolist()):
        items[row, size:] = 0
        actions[row, size:] = 0
    return items, actions, gaps.cumsum(dim=1), lengths


@pytest.mark.parametrize("kind", ["fuxi", "lrurec"])
def test_shapes_and_every_parameter_gets_a_finite_gradient(kind: str) -> None:
    model = _model(kind, dropout=0.2).train()
    items, actions, timestamps, lengths = _batch()
    hidden = model(items, actions, timestamps, lengths)
    assert hidden.shape == (3, 9, 16) and hidden.dtype == torch.float32
    assert not hidden[1, 7:].any() and not hidden[2, 1:].any()  # beyond each length: zero
    hidden.pow(2).sum().backward()
    for name, parameter in model.named_parameters():
        if name.startswith("encoder."):
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
            assert not torch.is_complex(parameter), name  # DDP and checkpoints see real tensors only
            assert parameter.grad.abs().sum() > 0, name


def test_fuxi_time_buckets_are_the_references() -> None:
    # gaps to position 0 in seconds: 0, 0.5, 1, 2, 10, 1e9 -> floor(ln(max(gap, 1)) / 0.301)
    timestamps = torch.tensor([[0, 500, 1_000, 2_000, 10_000, 10**12]])
    buckets = fuxi_time_buckets(timestamps, max_bucket=128)
    assert buckets[0, :, 0].tolist() == [0, 0, 0, 2, 7, 68]
    assert torch.equal(buckets[0], buckets[0].T)
    assert fuxi_time_buckets(timestamps, max_bucket=5)[0, -1, 0] == 5  # capped


@pytest.mark.parametrize("weights", ["position_weight", "time_weight"])
def test_fuxi_positional_and_temporal_channels_multiply_v(weights: str) -> None:
    """Each channel's learned weights reach the output; with both zeroed, the positional and
    temporal channels add nothing, so moving timestamps then changes nothing."""
    model = _model("fuxi", fuxi_absolute_positions=False)
    inputs = _batch()
    before = model(*inputs)
    with torch.no_grad():
        for block in model.encoder.blocks:
            getattr(block, weights).mul_(-3.0)
    assert not torch.allclose(before, model(*inputs), atol=1e-5)
    with torch.no_grad():
        for block in model.encoder.blocks:
            block.position_weight.zero_()
            block.time_weight.zero_()
    items, actions, timestamps, lengths = inputs
    later = timestamps.clone()
    later[:, 1:] += 7 * 86_400_000
    assert torch.allclose(model(items, actions, timestamps, lengths), model(items, actions, later, lengths))


def test_fuxi_reads_time_gaps() -> None:
    model = _model("fuxi")
    items, actions, timestamps, lengths = _batch()
    later = timestamps.clone()
    later[0, 3:] += 30 * 86_400_000
    before, after = model(items, actions, timestamps, lengths), model(items, actions, later, lengths)
    assert torch.allclose(before[0, :3], after[0, :3], atol=1e-6)  # earlier gaps unchanged
    assert not torch.allclose(before[0, 3:], after[0, 3:], atol=1e-5)


def test_fuxi_absolute_positions_switch() -> None:
    reference = _model("fuxi")
    assert isinstance(reference.encoder, FuXiAlpha)
    positions = reference.encoder.inputs.positions
    assert positions is not None  # the reference's default
    assert 0.15 < float(positions.weight.detach().std()) < 0.45  # Xavier-normal (12, 16): std sqrt(2 / 28) = 0.27
    inputs = _batch()
    before = reference(*inputs)
    with torch.no_grad():
        positions.weight.mul_(-1.0)
    assert not torch.allclose(before, reference(*inputs), atol=1e-5)
    without = _model("fuxi", fuxi_absolute_positions=False)
    assert without.encoder.inputs.positions is None
    assert "encoder.inputs.positions.weight" not in without.state_dict()


def _recurrence(decay: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    state = torch.zeros_like(inputs[:, 0])
    states = []
    for t in range(inputs.shape[1]):
        state = decay * state + inputs[:, t]
        states.append(state)
    return torch.stack(states, dim=1)


@pytest.mark.parametrize("length", [1, 2, 7, 37, 64])
def test_the_parallel_scan_equals_the_recurrence(length: int) -> None:
    generator = torch.Generator().manual_seed(length)
    modulus = 0.5 + 0.49 * torch.rand(24, generator=generator)
    decay = torch.polar(modulus, 2 * math.pi * torch.rand(24, generator=generator))
    inputs = torch.complex(
        torch.randn(3, length, 24, generator=generator), torch.randn(3, length, 24, generator=generator)
    )
    assert torch.allclose(linear_scan(decay, inputs), _recurrence(decay, inputs), atol=1e-4)


def test_stepping_through_a_history_equals_encoding_it_whole() -> None:
    model = _model("lrurec", num_blocks=3)
    encoder = model.encoder
    assert isinstance(encoder, LRURec)
    items, actions, timestamps, lengths = _batch(length=12, rows=2)
    lengths = torch.tensor([12, 12])
    whole = model(items, actions, timestamps, lengths)
    state = encoder.initial_state(batch=2)
    assert [tuple(block.shape) for block in state] == [(2, 32)] * 3  # one complex 2·D state per block
    with torch.no_grad():
        for t in range(12):
            hidden, state = encoder.step(state, model.item_embedding(items[:, t]), actions[:, t])
            assert torch.allclose(hidden, whole[:, t], atol=1e-4), t


def test_lrurec_eigenvalues_start_on_the_configured_ring() -> None:
    for r_min, r_max in ((0.8, 0.99), (0.3, 0.5)):
        model = _model("lrurec", lrurec_r_min=r_min, lrurec_r_max=r_max)
        for block in model.encoder.blocks:
            modulus = block.recurrence.decay().abs()
            assert float(modulus.min()) >= r_min - 1e-6 and float(modulus.max()) <= r_max + 1e-6
            # Inputs are scaled by sqrt(1 - |λ|^2), as the reference's normalisation.
            gamma = torch.exp(block.recurrence.gamma_log)
            assert torch.allclose(gamma, torch.sqrt(1 - modulus**2), atol=1e-5)
    inputs = _batch()
    assert not torch.allclose(_model("lrurec")(*inputs), _model("lrurec", lrurec_r_min=0.3, lrurec_r_max=0.5)(*inputs))


def test_the_lrurec_ring_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="lrurec_r_min 0.995 must be below lrurec_r_max 0.99"):
        EncoderConfig(kind="lrurec", lrurec_r_min=0.995)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["train", "--model", "bert5rec"],
            "--model must be hstu, sasrec, fuxi, lrurec, bert4rec or popularity, not 'bert5rec'",
        ),
        (["train", "--model", "lrurec", "--lrurec-r-max", "1.5"], "less than 1"),
        (["train", "--model", "lrurec", "--lrurec-r-min", "0.995"], "must be below lrurec_r_max 0.99"),
    ],
)
def test_bad_model_options_fail_on_the_command_line(args: list[str], message: str) -> None:
    app = training_app()
    result = CliRunner().invoke(app, args, env=WIDE)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output


def test_help_lists_the_models() -> None:
    app = training_app()
    result = CliRunner().invoke(app, ["train", "--help"], env=WIDE)
    assert "hstu, sasrec, fuxi, lrurec, bert4rec or popularity" in " ".join(result.output.split())
    assert "--fuxi-absolute-positions" in result.output and "--lrurec-r-min" in result.output

"""The sequence encoders (HSTU, SASRec, FuXi-alpha, LRURec, BERT4Rec): causal (all but BERT4Rec), blind
to trailing padding, sensitive to actions and time. FuXi-alpha and LRURec's own parts:
tests/training/test_fuxi_lrurec.py; BERT4Rec's (bidirectional, masked): tests/training/test_bert4rec.py."""

from __future__ import annotations

import pytest
import torch

from training.common.config import EncoderConfig
from training.common.hstu import HSTU, time_gap_buckets
from training.retrieval.model import RetrievalModel

KINDS = ["hstu", "sasrec", "fuxi", "lrurec"]  # the causal ones
EVERY_KIND = [*KINDS, "bert4rec"]


def _model(kind: str) -> RetrievalModel:
    torch.manual_seed(0)
    return RetrievalModel(EncoderConfig(kind=kind, dim=16, num_heads=2, max_len=8, dropout=0.0), num_items=20).eval()


def _inputs() -> tuple[torch.Tensor, ...]:
    items = torch.tensor([[3, 5, 7, 9, 11, 0]])
    actions = torch.tensor([[2, 3, 7, 2, 4, 0]])
    timestamps = torch.tensor([[0, 60_000, 120_000, 3_600_000, 90_000_000, 0]])
    return items, actions, timestamps, torch.tensor([5])


@pytest.mark.parametrize("kind", KINDS)
def test_a_position_never_sees_later_events(kind: str) -> None:
    model = _model(kind)
    items, actions, timestamps, lengths = _inputs()
    before = model(items, actions, timestamps, lengths)
    changed_items = items.clone()
    changed_items[0, 3] = 13
    changed_actions = actions.clone()
    changed_actions[0, 4] = 8
    after = model(changed_items, changed_actions, timestamps, lengths)
    assert torch.allclose(before[0, :3], after[0, :3], atol=1e-6)
    assert not torch.allclose(before[0, 3:5], after[0, 3:5])


@pytest.mark.parametrize("kind", EVERY_KIND)
def test_trailing_padding_changes_nothing(kind: str) -> None:
    model = _model(kind)
    items, actions, timestamps, lengths = _inputs()
    full = model(items, actions, timestamps, lengths)
    trimmed = model(items[:, :5], actions[:, :5], timestamps[:, :5], lengths)
    assert torch.allclose(full[0, :5], trimmed[0], atol=1e-6)
    assert not full[0, 5].any()  # padding positions are zero


@pytest.mark.parametrize("kind", EVERY_KIND)
def test_the_action_type_is_an_input(kind: str) -> None:
    model = _model(kind)
    items, actions, timestamps, lengths = _inputs()
    disliked = actions.clone()
    disliked[0, 0] = 8
    before = model(items, actions, timestamps, lengths)[0, 0]
    assert not torch.allclose(before, model(items, disliked, timestamps, lengths)[0, 0])


def test_hstu_reads_time_gaps_through_its_bias() -> None:
    model = _model("hstu")
    for block in model.encoder.blocks:
        torch.nn.init.normal_(block.time_bias)
    items, actions, timestamps, lengths = _inputs()
    later = timestamps.clone()
    later[0, 1] += 86_400_000
    assert not torch.allclose(
        model(items, actions, timestamps, lengths)[0, 1], model(items, actions, later, lengths)[0, 1]
    )


def test_time_gap_buckets_are_quarter_octaves_of_seconds() -> None:
    timestamps = torch.tensor([[0, 999, 1_000, 3_000, 15_000, 10**12]])
    buckets = time_gap_buckets(timestamps, num_buckets=64)
    # gaps to position 0 in seconds: 0, 0.999, 1, 3, 15, 1e9 -> floor(4 * log2(1 + gap)), capped at 63
    assert buckets[0, :, 0].tolist() == [0, 3, 4, 8, 16, 63]
    assert torch.equal(buckets[0], buckets[0].T)


def test_heads_must_divide_the_width() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        EncoderConfig(dim=50, num_heads=3)


def names_to_values(model: torch.nn.Module, names: tuple[str, ...]) -> list[torch.Tensor]:
    """The live parameters ``names`` of ``model``."""
    params = dict(model.named_parameters())
    return [params[name] for name in names]


REFERENCE_HSTU = {
    "hstu_absolute_positions": True,
    "hstu_uvqk_bias": False,
    "hstu_norm_affine": False,
    "hstu_reference_init": True,
}


def test_the_reference_hstu_switches_build_what_they_name() -> None:
    config = EncoderConfig(kind="hstu", dim=16, num_heads=2, max_len=8, dropout=0.0, **REFERENCE_HSTU)
    torch.manual_seed(0)
    model = RetrievalModel(config, num_items=20).eval()
    names = set(model.state_dict())
    assert "encoder.inputs.positions.weight" in names
    assert "encoder.blocks.0.uvqk.bias" not in names
    assert not any(name.startswith("encoder.blocks.0.input_norm") for name in names)
    biases = names_to_values(model, ("encoder.blocks.0.position_bias", "encoder.blocks.0.time_bias"))
    assert all(float(bias.abs().sum()) > 0 for bias in biases)
    (positions,) = names_to_values(model, ("encoder.inputs.positions.weight",))
    assert 0.15 < float(positions.std()) < 0.35  # N(0, 1/16): std 0.25
    default = RetrievalModel(EncoderConfig(kind="hstu", dim=16, num_heads=2, max_len=8), num_items=20)
    assert isinstance(default.encoder, HSTU)
    (default_bias,) = names_to_values(default, ("encoder.blocks.0.position_bias",))
    assert float(default_bias.abs().sum()) > 0  # the reference initialisation is the default
    assert "encoder.inputs.positions.weight" not in default.state_dict()
    earlier_config = EncoderConfig(kind="hstu", dim=16, num_heads=2, max_len=8, hstu_reference_init=False)
    (earlier_bias,) = names_to_values(RetrievalModel(earlier_config, num_items=20), ("encoder.blocks.0.position_bias",))
    assert float(earlier_bias.abs().sum()) == 0  # the earlier initialisation: zero relative biases


def test_reference_hstu_reads_absolute_positions() -> None:
    """The learned absolute positions are an input: other position rows, other outputs."""
    config = EncoderConfig(kind="hstu", dim=16, num_heads=2, max_len=8, dropout=0.0, **REFERENCE_HSTU)
    torch.manual_seed(0)
    model = RetrievalModel(config, num_items=20).eval()
    inputs = _inputs()
    before = model(*inputs)
    (positions,) = names_to_values(model, ("encoder.inputs.positions.weight",))
    with torch.no_grad():
        positions.mul_(-1.0)
    assert not torch.allclose(before, model(*inputs), atol=1e-5)


REFERENCE_SASREC = {"sasrec_post_norm": True, "sasrec_reference_init": True}


def _sasrec(**switches: bool) -> RetrievalModel:
    torch.manual_seed(0)
    config = EncoderConfig(kind="sasrec", dim=16, num_heads=2, max_len=8, dropout=0.0, **switches)
    return RetrievalModel(config, num_items=20).eval()


@pytest.mark.parametrize("switches", [{"sasrec_post_norm": True}, REFERENCE_SASREC], ids=["post_norm", "reference"])
def test_the_reference_sasrec_is_causal_and_blind_to_trailing_padding(switches: dict[str, bool]) -> None:
    model = _sasrec(**switches)
    items, actions, timestamps, lengths = _inputs()
    before = model(items, actions, timestamps, lengths)
    assert before.shape == (1, 6, 16)
    changed = items.clone()
    changed[0, 3] = 13
    after = model(changed, actions, timestamps, lengths)
    assert torch.allclose(before[0, :3], after[0, :3], atol=1e-6)
    assert not torch.allclose(before[0, 3:5], after[0, 3:5])
    trimmed = model(items[:, :5], actions[:, :5], timestamps[:, :5], lengths)
    assert torch.allclose(before[0, :5], trimmed[0], atol=1e-6) and not before[0, 5].any()


def test_sasrec_post_norm_builds_recboles_layout() -> None:
    """Input LN(item + action + position) unscaled; blocks LN(x + MHA(x)), LN(x + FFN(x)); no final norm."""
    pre, post = _sasrec(), _sasrec(sasrec_post_norm=True)
    assert "encoder.output_norm.weight" in pre.state_dict() and "encoder.inputs.norm.weight" not in pre.state_dict()
    assert "encoder.output_norm.weight" not in post.state_dict() and "encoder.inputs.norm.weight" in post.state_dict()
    items, actions, _, lengths = _inputs()
    valid = torch.arange(6).unsqueeze(0) < lengths.unsqueeze(1)
    emb = post.item_embedding(items)
    inputs = post.encoder.inputs
    summed = emb + inputs.actions(actions) + inputs.positions.weight[:6]
    expected_input = torch.nn.functional.layer_norm(summed, (16,)) * valid.unsqueeze(-1)
    assert torch.allclose(inputs(emb, actions, valid), expected_input, atol=1e-6)
    pre_summed = emb * 4.0 + pre.encoder.inputs.actions(actions) + pre.encoder.inputs.positions.weight[:6]
    assert torch.allclose(pre.encoder.inputs(emb, actions, valid), pre_summed * valid.unsqueeze(-1), atol=1e-6)
    future = torch.ones(6, 6, dtype=torch.bool).triu(1)
    x = torch.randn(1, 6, 16)
    for model, post_norm in ((pre, False), (post, True)):
        block = model.encoder.blocks[0]
        if post_norm:
            h = block.attention_norm(x + block.attention(x, x, x, attn_mask=future, need_weights=False)[0])
            expected = block.ffn_norm(h + block.ffn(h))
        else:
            n = block.attention_norm(x)
            h = x + block.attention(n, n, n, attn_mask=future, need_weights=False)[0]
            expected = h + block.ffn(block.ffn_norm(h))
        assert torch.allclose(block(x, future), expected, atol=1e-6), post_norm


def test_sasrec_reference_init_draws_every_projection_from_n_0_002() -> None:
    default, reference = _sasrec(), _sasrec(sasrec_reference_init=True)
    names = (
        "encoder.blocks.0.attention.in_proj_weight",
        "encoder.blocks.0.attention.out_proj.weight",
        "encoder.blocks.0.ffn.0.weight",
        "encoder.blocks.1.ffn.3.weight",
    )
    for weight in names_to_values(reference, names):
        assert 0.012 < float(weight.std()) < 0.028
    assert all(float(weight.std()) > 0.05 for weight in names_to_values(default, names))  # PyTorch's defaults
    biases = ("encoder.blocks.0.ffn.0.bias", "encoder.blocks.1.ffn.3.bias", "encoder.blocks.0.attention.in_proj_bias")
    assert all(not bias.any() for bias in names_to_values(reference, biases))
    assert names_to_values(default, biases)[0].any()  # PyTorch's Linear bias is uniform, not zero
    (norm,) = names_to_values(reference, ("encoder.blocks.0.ffn_norm.weight",))
    assert torch.equal(norm, torch.ones(16))


def test_without_actions_the_action_type_is_no_input() -> None:
    model = _sasrec(**REFERENCE_SASREC, use_actions=False)
    assert not any(name.startswith("encoder.inputs.actions") for name in model.state_dict())
    items, actions, timestamps, lengths = _inputs()
    assert torch.equal(model(items, actions, timestamps, lengths), model(items, actions * 0 + 8, timestamps, lengths))

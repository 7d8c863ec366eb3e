"""BERT4Rec and the masked-item objective: the reference's masking counts and their uniformity, the
targets the loss scores at masked positions, the mask token hiding an item, bidirectional attention
(and the causal switch), the query with an appended mask token in the Retriever, and bad options at
the command line. (Padding and actions for every encoder: test_encoders.py.)"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from clidata import WIDE, training_app
from typer.testing import CliRunner

from ingestion.schema import ACTION_IDS
from training.common.bert4rec import MASK_ACTION, BERT4Rec, append_mask_token, mask_action_ids, mask_positions
from training.common.config import EncoderConfig
from training.common.encoders import last_hidden
from training.common.loss import retrieval_loss
from training.retrieval.model import RetrievalModel
from training.retrieval.retriever import Retriever

TEMPERATURE = 0.5


def _model(max_len: int = 8, **fields: object) -> RetrievalModel:
    torch.manual_seed(0)
    config = EncoderConfig(
        **{"kind": "bert4rec", "dim": 16, "num_heads": 2, "max_len": max_len, "dropout": 0.0, **fields}
    )
    return RetrievalModel(config, num_items=20).eval()


def _inputs() -> tuple[torch.Tensor, ...]:
    items = torch.tensor([[3, 5, 7, 9, 11, 0]])
    actions = torch.tensor([[2, 3, 7, 2, 4, 0]])
    timestamps = torch.tensor([[0, 60_000, 120_000, 3_600_000, 90_000_000, 0]])
    return items, actions, timestamps, torch.tensor([5])


def test_bert4rec_is_the_masked_item_model_by_default() -> None:
    config = EncoderConfig(kind="bert4rec")
    assert config.training_objective == "masked_item" and not config.bert4rec_causal and config.mask_prob == 0.2
    assert EncoderConfig(kind="sasrec").training_objective == "next_item"
    assert isinstance(_model().encoder, BERT4Rec)


def test_mask_counts_are_the_references_and_positions_are_uniform() -> None:
    lengths = torch.tensor([1, 2, 3, 7, 12, 40, 0])
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(len(lengths), 40)
    draws = 2000
    for _ in range(draws):
        masked = mask_positions(lengths, 40, mask_prob=0.2, max_len=30, generator=generator)
        expected = [min(int(30 * 0.2), max(1, round(n * 0.2))) for n in lengths.tolist()]  # the reference's count
        assert masked.sum(1).tolist() == [0 if n == 0 else e for n, e in zip(lengths.tolist(), expected, strict=True)]
        counts += masked.float()
    beyond = torch.arange(40).unsqueeze(0) >= lengths.unsqueeze(1)
    assert not counts[beyond].any()  # padding is never masked
    # Row of 40 items: 6 of 40 masked each time, every position about 6/40 of the draws.
    share = counts[5] / draws
    assert share.sub(6 / 40).abs().max() < 4 * math.sqrt(6 / 40 * (1 - 6 / 40) / draws)
    assert counts[0, 0] == draws  # one item: always masked (max(1, ...))


def test_masking_is_deterministic_in_the_generator() -> None:
    lengths = torch.tensor([9, 5])
    first = mask_positions(lengths, 9, 0.5, 9, torch.Generator().manual_seed(3))
    assert torch.equal(first, mask_positions(lengths, 9, 0.5, 9, torch.Generator().manual_seed(3)))
    assert mask_positions(torch.tensor([9]), 9, 0.5, 9, torch.Generator().manual_seed(3)).sum() == 4  # round(4.5) = 4


def test_the_mask_token_hides_the_item_it_replaces() -> None:
    model = _model()
    items, actions, timestamps, lengths = _inputs()
    masked = torch.zeros_like(items, dtype=torch.bool)
    masked[0, 2] = True
    marked = mask_action_ids(actions, masked)
    assert marked[0].tolist() == [2, 3, MASK_ACTION, 2, 4, 0]
    other = items.clone()
    other[0, 2] = 17
    before = model(items, marked, timestamps, lengths)
    assert torch.allclose(before, model(other, marked, timestamps, lengths), atol=1e-6)
    assert not torch.allclose(before, model(items, actions, timestamps, lengths))


def test_a_later_item_changes_an_earlier_positions_output_unless_causal() -> None:
    items, actions, timestamps, lengths = _inputs()
    later = items.clone()
    later[0, 4] = 13
    bidirectional = _model()
    assert not torch.allclose(
        bidirectional(items, actions, timestamps, lengths)[0, 0],
        bidirectional(later, actions, timestamps, lengths)[0, 0],
    )
    causal = _model(bert4rec_causal=True, objective="next_item")
    assert torch.allclose(
        causal(items, actions, timestamps, lengths)[0, :4],
        causal(later, actions, timestamps, lengths)[0, :4],
        atol=1e-6,
    )


def test_every_parameter_gets_a_finite_gradient() -> None:
    model = _model(dropout=0.2).train()
    items, actions, timestamps, lengths = _inputs()
    masked = torch.tensor([[False, True, False, False, True, False]])
    hidden = model(items, mask_action_ids(actions, masked), timestamps, lengths)
    hidden.pow(2).sum().backward()
    for name, parameter in model.named_parameters():
        if name.startswith("encoder."):
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
            if name != "encoder.actions.weight":  # rows of the actions not in the batch stay untouched
                assert parameter.grad.abs().sum() > 0, name


def test_the_loss_scores_masked_positions_against_their_own_items() -> None:
    generator = torch.Generator().manual_seed(1)
    num_items, dim = 9, 4
    table = torch.randn(num_items + 1, dim, generator=generator)
    hidden = torch.randn(1, 5, dim, generator=generator, requires_grad=True)
    items = [3, 5, 2, 8, 6]
    batch = {
        "item_indices": torch.tensor([items]),
        "action_ids": torch.tensor([[ACTION_IDS[a] for a in ["view", "click", "skip", "impression", "click"]]]),
        "lengths": torch.tensor([5]),
        "valid": torch.tensor([True]),
    }
    masked = torch.tensor([[False, True, True, True, False]])  # a click, a skip, an impression
    catalogue = torch.arange(1, num_items + 1)
    terms = retrieval_loss(
        hidden, table[items].unsqueeze(0), batch, catalogue, table[catalogue], temperature=TEMPERATURE,
        in_batch_negatives=0, ntr_weight=0.5, kind="full", masked=masked,
    )  # fmt: skip
    logits = F.normalize(hidden[0], dim=-1) @ F.normalize(table[1:], dim=-1).T / TEMPERATURE
    cross_entropy = F.cross_entropy(logits[1:2], torch.tensor([5 - 1]))
    p_skipped = torch.softmax(logits[2], dim=0)[2 - 1]
    assert (terms.positives, terms.negatives) == (1, 1)  # the impression gets no term
    assert terms.softmax.item() == pytest.approx(cross_entropy.item(), rel=1e-5)
    assert terms.not_to_recommend.item() == pytest.approx(-math.log(1 - p_skipped.item()), rel=1e-5)
    terms.total.backward()
    assert hidden.grad[0, [0, 3, 4]].abs().sum() == 0 and hidden.grad[0, [1, 2]].abs().sum() > 0


def test_append_mask_token_puts_a_mask_after_each_history_dropping_the_oldest_when_full() -> None:
    batch = {
        "item_indices": torch.tensor([[3, 5, 7, 9], [4, 6, 0, 0], [0, 0, 0, 0]]),
        "action_ids": torch.tensor([[2, 3, 7, 2], [2, 2, 0, 0], [0, 0, 0, 0]]),
        "timestamps": torch.tensor([[10, 20, 30, 40], [5, 6, 0, 0], [0, 0, 0, 0]]),
        "lengths": torch.tensor([4, 2, 0]),
    }
    query = append_mask_token(batch, max_len=4)
    assert query["lengths"].tolist() == [4, 3, 1]
    assert query["item_indices"].tolist() == [[5, 7, 9, 0], [4, 6, 0, 0], [0, 0, 0, 0]]
    m = MASK_ACTION
    assert query["action_ids"].tolist() == [[3, 7, 2, m], [2, 2, m, 0], [m, 0, 0, 0]]
    assert query["timestamps"].tolist() == [[20, 30, 40, 40], [5, 6, 6, 0], [0, 0, 0, 0]]
    wider = append_mask_token(batch, max_len=8)
    assert wider["lengths"].tolist() == [5, 3, 1] and wider["item_indices"][0].tolist() == [3, 5, 7, 9, 0]


def test_the_retriever_queries_a_masked_item_model_at_an_appended_mask_token() -> None:
    model = _model(max_len=5)
    items, actions, timestamps, lengths = _inputs()  # 5 events: the query drops the oldest
    retriever = Retriever(model.encoder, model.item_embedding.weight)
    batch = {"item_indices": items, "action_ids": actions, "timestamps": timestamps, "lengths": lengths}
    by_hand_items = torch.tensor([[5, 7, 9, 11, 0]])
    by_hand_actions = torch.tensor([[3, 7, 2, 4, MASK_ACTION]])
    by_hand_stamps = torch.tensor([[60_000, 120_000, 3_600_000, 90_000_000, 90_000_000]])
    with torch.no_grad():
        hidden = model(by_hand_items, by_hand_actions, by_hand_stamps, torch.tensor([5]))
    expected = F.normalize(last_hidden(hidden, torch.tensor([5])), dim=-1)
    assert torch.allclose(retriever.queries(batch), expected, atol=1e-6)
    scores, found = retriever.top_k(batch, k=5)
    assert found.shape == (1, 5) and (found > 0).all() and torch.isfinite(scores).all()
    causal = _model(max_len=5, bert4rec_causal=True, objective="next_item")
    plain = Retriever(causal.encoder, causal.item_embedding.weight)
    with torch.no_grad():
        no_mask = F.normalize(
            last_hidden(causal(items[:, :5], actions[:, :5], timestamps[:, :5], lengths), lengths), dim=-1
        )
    assert not plain.masked_query and torch.allclose(plain.queries(batch), no_mask, atol=1e-6)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "sasrec", "objective": "masked_item"}, "objective masked_item needs kind bert4rec"),
        ({"kind": "bert4rec", "objective": "next_item"}, "needs bert4rec_causal"),
        ({"kind": "bert4rec", "mask_prob": 1.0}, "less than 1"),
    ],
)
def test_incompatible_objectives_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EncoderConfig(**fields)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--objective", "next_item"], "allowed: objective masked_item or auto, or next_item with bert4rec_causal"),
        (["--mask-prob", "0"], "greater than 0"),
        (["--objective", "masked"], "'masked' is not one of 'auto', 'next_item', 'masked_item'"),
    ],
)
def test_bad_bert4rec_options_fail_on_the_command_line(args: list[str], message: str) -> None:
    app = training_app()
    result = CliRunner().invoke(app, ["train", "--model", "bert4rec", *args], env=WIDE)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output

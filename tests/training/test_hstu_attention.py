"""HSTU's chunked attention (``hstu_attention="chunked"``) computes what the reference does:
the same hidden states and the same gradients, for chunks that divide the length or not,
with padding, several heads, under inference mode and under bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from training.common.config import EncoderConfig
from training.retrieval.model import RetrievalModel

NUM_ITEMS = 30


def _pair(chunk: int, **encoder: object) -> tuple[RetrievalModel, RetrievalModel]:
    torch.manual_seed(0)
    fields = {"dim": 16, "num_heads": 2, "max_len": 40, "dropout": 0.0, **encoder}
    reference = RetrievalModel(EncoderConfig(**fields), NUM_ITEMS)  # type: ignore[arg-type]
    chunked = RetrievalModel(
        EncoderConfig(**fields, hstu_attention="chunked", hstu_attention_chunk=chunk),  # type: ignore[arg-type]
        NUM_ITEMS,
    )
    chunked.load_state_dict(reference.state_dict())
    return reference, chunked


def _batch(length: int = 37) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    items = torch.randint(1, NUM_ITEMS + 1, (3, length), generator=generator)
    actions = torch.randint(1, 5, (3, length), generator=generator)
    timestamps = torch.cumsum(torch.randint(0, 10**7, (3, length), generator=generator), dim=1)
    return items, actions, timestamps, torch.tensor([length, 20, 1])


def _forward_backward(model: RetrievalModel, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    hidden = model(*batch)
    (hidden * torch.linspace(-1, 1, hidden.shape[-1])).sum().backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    return hidden.detach(), grads


@pytest.mark.parametrize("chunk", [1, 8, 16, 37, 64])
def test_chunked_attention_equals_the_reference_and_its_gradients(chunk: int) -> None:
    reference, chunked = _pair(chunk)
    batch = _batch()
    expected, expected_grads = _forward_backward(reference, batch)
    hidden, grads = _forward_backward(chunked, batch)
    torch.testing.assert_close(hidden, expected, atol=1e-6, rtol=1e-5)
    assert grads.keys() == expected_grads.keys() and any("time_bias" in name for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_chunked_attention_in_inference_and_under_bf16_autocast() -> None:
    reference, chunked = _pair(8, hstu_absolute_positions=True)
    batch = _batch(24)
    with torch.inference_mode():
        torch.testing.assert_close(chunked(*batch), reference(*batch), atol=1e-6, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        torch.testing.assert_close(chunked(*batch), reference(*batch), atol=2e-2, rtol=2e-2)


def test_a_chunk_holds_only_its_own_scores() -> None:
    # The scores a chunk computes are (B, H, chunk, keys up to its last query), never (B, H, L, L).
    _, chunked = _pair(8)
    shapes: list[tuple[int, ...]] = []
    block = chunked.encoder.blocks[0]
    original = block._attention

    def record(q: torch.Tensor, k: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        shapes.append((q.shape[2], k.shape[2]))
        return original(q, k, *rest)

    block._attention = record  # type: ignore[method-assign]
    with torch.no_grad():
        chunked(*_batch(20))
    assert shapes == [(8, 8), (8, 16), (4, 20)]

"""The dense-weights codec of model deltas (training/streaming/dense.py): unit tier."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

from training.streaming.dense import decode_dense_weights, encode_dense_weights


def test_round_trip_keeps_names_dtypes_shapes_and_values() -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    state = dict(module.state_dict())
    state["steps"] = torch.tensor([7], dtype=torch.int64)
    decoded = decode_dense_weights(encode_dense_weights(state))
    assert list(decoded) == list(state)
    for name, tensor in state.items():
        assert decoded[name].dtype == tensor.dtype
        assert decoded[name].device.type == "cpu"
        assert torch.equal(decoded[name], tensor)
    clone = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    clone.load_state_dict({k: v for k, v in decoded.items() if k != "steps"})
    x = torch.randn(2, 4)
    assert torch.equal(clone(x), module(x))


def test_encode_copies_so_later_training_does_not_change_the_blob() -> None:
    weight = torch.zeros(3)
    blob = encode_dense_weights({"w": weight})
    weight.add_(1.0)
    assert torch.equal(decode_dense_weights(blob)["w"], torch.zeros(3))


def test_a_view_is_stored_without_its_base() -> None:
    base = torch.arange(1000, dtype=torch.float32)
    small = encode_dense_weights({"w": base[:2]})
    assert len(small) < 1000 * 4
    assert torch.equal(decode_dense_weights(small)["w"], base[:2])


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError):
        encode_dense_weights({})
    with pytest.raises(TypeError):
        encode_dense_weights({"w": [1.0]})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        decode_dense_weights(b"")
    buffer = io.BytesIO()
    torch.save([torch.zeros(1)], buffer)
    with pytest.raises(ValueError, match="not a"):
        decode_dense_weights(buffer.getvalue())


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_a_blob_with_code_is_refused() -> None:
    buffer = io.BytesIO()
    torch.save({"w": _Evil()}, buffer, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(pickle.UnpicklingError):
        decode_dense_weights(buffer.getvalue())

"""The dense-weights codec: the bytes of ``ModelDelta.dense_weights``.

A delta carries the Retriever's ``encoder`` state (every weight but the item table) as one blob:
``torch.save`` of a plain ``{name: tensor}`` dict of CPU tensors, read back with
``torch.load(weights_only=True)`` so a blob from the lake can hold tensors only, never code.
The follow job encodes, serving replicas decode and ``load_state_dict`` into their encoder.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import torch


def encode_dense_weights(state: Mapping[str, torch.Tensor]) -> bytes:
    """Serialise a state dict to bytes: detached, contiguous CPU copies, in the given key order."""
    if not state:
        raise ValueError("dense weights: empty state dict")
    plain: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"dense weights: {name!r} is {type(tensor).__name__}, not a tensor")
        plain[name] = tensor.detach().to("cpu").contiguous().clone()
    buffer = io.BytesIO()
    torch.save(plain, buffer)
    return buffer.getvalue()


def decode_dense_weights(blob: bytes) -> dict[str, torch.Tensor]:
    """Read bytes from :func:`encode_dense_weights` back into a ``{name: CPU tensor}`` dict.

    Loads with ``weights_only=True``: a blob that holds anything but tensors and plain containers
    raises instead of running code."""
    if not blob:
        raise ValueError("dense weights: empty blob")
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError("dense weights: the blob is not a {name: tensor} dict")
    return state

"""The sizes a scaling law is written in, per trial: parameters (non-embedding and embedding),
tokens, training FLOPs and an upper estimate of a worker's memory (to refuse trials the cluster
cannot hold before any starts).

Parameters: every ``nn.Embedding`` (the item table, action types, absolute positions) is an
embedding parameter; everything else of the encoder (projections, norms, relative biases,
feed-forward layers) is non-embedding, as Kaplan et al. (2020) count N.

FLOPs: per token trained, a forward pass costs about 2 N (every non-embedding weight is one
multiply-add), 2 x blocks x context x dim for attention scores and their weighted sum (Kaplan et
al.'s context term, with context the mean history length the model reads) and 2 x dim x
candidates for the loss's scores (the sampled negatives, or the whole catalogue with the full
softmax); backward costs twice the forward, so training is 3 x forward x tokens seen.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.common.config import EncoderConfig
from training.common.sharded_table import table_width
from training.retrieval.config import TrainConfig

GIB = 2**30
FLOAT_BYTES = 4
# What a Ray Train worker holds before any tensor of the model: Python, torch, torchrec, FBGEMM,
# the feature arrays (measured as about 0.7 GiB resident on this machine's 2-worker runs).
WORKER_BASE_BYTES = 1 * GIB
# Floats kept per position and block for backward (inputs, projections, attention output, norms,
# feed-forward): an upper estimate across the registered encoders.
ACTIVATION_FLOATS_PER_DIM = 24


@dataclass(frozen=True)
class ModelSize:
    """Parameters of a trial's model."""

    non_embedding: int
    embedding: int  # the item table's rows (dim columns each) and the encoder's embeddings


def model_size(encoder: EncoderConfig, num_items: int) -> ModelSize:
    """Non-embedding and embedding parameters of ``encoder`` over ``num_items`` items."""
    from torch import nn

    from training.common.model import build_encoder

    module = build_encoder(encoder)
    embedded = sum(
        parameter.numel()
        for layer in module.modules()
        if isinstance(layer, nn.Embedding)
        for parameter in layer.parameters(recurse=False)
    )
    total = sum(parameter.numel() for parameter in module.parameters())
    return ModelSize(non_embedding=total - embedded, embedding=embedded + (num_items + 1) * encoder.dim)


def loss_candidates(config: TrainConfig, num_items: int) -> int:
    """Items each position's loss scores: the whole catalogue (full softmax) or the negatives."""
    if config.resolved_loss(num_items) == "full":
        return num_items
    return config.num_negatives + config.in_batch_negatives


def training_flops(config: TrainConfig, size: ModelSize, num_items: int, mean_length: float, tokens: int) -> float:
    """Training FLOPs of ``tokens`` positions (the module docstring's estimate)."""
    encoder = config.encoder
    context = min(mean_length, encoder.max_len)
    forward = (
        2 * size.non_embedding
        + 2 * encoder.num_blocks * context * encoder.dim
        + 2 * encoder.dim * loss_candidates(config, num_items)
    )
    return 3.0 * forward * tokens


def worker_memory_bytes(config: TrainConfig, size: ModelSize, num_items: int, workers: int) -> int:
    """An upper estimate of one Ray Train worker's memory: its base, the dense weights with
    their gradients and Adam moments, its share of the item table (with optimizer state and the
    gathered copy rank 0 writes a checkpoint from), a batch's activations and attention maps,
    and the loss's score matrix."""
    encoder = config.encoder
    table = (num_items + 1) * table_width(encoder.dim)
    weights = FLOAT_BYTES * (4 * size.non_embedding + 3 * table // workers + 2 * table)
    positions = config.batch_size * encoder.max_len
    activations = FLOAT_BYTES * positions * encoder.dim * encoder.num_blocks * ACTIVATION_FLOATS_PER_DIM
    attention = FLOAT_BYTES * 3 * config.batch_size * encoder.num_heads * encoder.max_len**2 * encoder.num_blocks
    scored = min(loss_candidates(config, num_items), config.loss_chunk_items)
    loss = FLOAT_BYTES * 3 * positions * scored
    return WORKER_BASE_BYTES + weights + activations + attention + loss

"""LRURec (Yue et al., "Linear Recurrent Units for Sequential Recommendation", WSDM'24; reference
code yueqirex/LRURec).

Input: LayerNorm(Dropout(item embedding + action embedding)); no positions (the recurrence orders
the history). Each block is an LRU layer then a position-wise feed-forward layer, both post-norm::

    b_t = γ ⊙ (B x_t + b)                    complex, 2·D wide; γ = sqrt(1 − |λ|²) (learned in log space)
    h_t = λ ⊙ h_{t−1} + b_t,  h_{−1} = 0     λ = exp(−exp(ν) + i·exp(θ)): a complex diagonal recurrence
    x'  = LayerNorm(Dropout(Re(C h_t + c)) + x_t)
    y   = LayerNorm(Dropout(W2 Dropout(GELU(W1 x'))) + x')        W1: D -> 4·D

Training runs the recurrence over all positions at once with a parallel scan (``linear_scan``:
ceil(log2 L) steps, each adding the state 2^k positions back times λ^(2^k)); ``LRURec.step``
advances a user's per-layer states by one event in O(D²), the same function one position at a
time, so a served state never needs the history again. λ starts on the ring r_min <= |λ| <= r_max
(``lrurec_r_min``/``lrurec_r_max``, the reference's 0.8 and 0.99) at a uniform angle; every other
weight and bias starts truncated-normal (std 0.02, within ±0.04), LayerNorms at their defaults,
all as the reference.

The complex projections are stored as real weights (B's real and imaginary rows in one Linear,
C as [Re C, −Im C] over [Re h; Im h]), the same functions with the same initial distribution, so
data-parallel training and checkpoints only ever see real tensors. The reference's per-item
output bias has no place in this project's cosine-similarity scoring (the Retriever seam) and is
left out.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from training.common.config import EncoderConfig
from training.common.encoders import InputEmbedding, SequenceEncoder

INIT_STD = 0.02
INIT_BOUND = 0.04
FFN_MULTIPLIER = 4

LRUState = list[torch.Tensor]  # one complex (B, 2·D) state per block


def linear_scan(decay: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """All h_t = decay * h_{t-1} + inputs_t (h_{-1} = 0) along dim 1 of ``inputs`` (B, L, N) for a
    diagonal ``decay`` (N,), in ceil(log2 L) parallel steps (Hillis-Steele)."""
    states = inputs
    power = decay
    offset = 1
    while offset < inputs.shape[1]:
        # After this step each state sums the inputs of the last 2 * offset positions.
        states = torch.cat([states[:, :offset], states[:, offset:] + power * states[:, :-offset]], dim=1)
        power = power * power
        offset *= 2
    return states


def reference_init(*layers: nn.Linear) -> None:
    """Weights and biases truncated-normal (std 0.02, within ±0.04), as the reference's."""
    for layer in layers:
        for weight in (layer.weight, layer.bias):
            nn.init.trunc_normal_(weight, std=INIT_STD, a=-INIT_BOUND, b=INIT_BOUND)


class LRULayer(nn.Module):
    """A linear recurrent unit with a residual and post-LayerNorm."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        dim = config.dim
        self.state_dim = 2 * dim
        r_min, r_max = config.lrurec_r_min, config.lrurec_r_max
        # |λ| uniform in area on the ring [r_min, r_max], angle uniform in [0, 2π), as the reference.
        modulus_draw, angle_draw = torch.rand(self.state_dim), torch.rand(self.state_dim)
        nu = -0.5 * torch.log(modulus_draw * (r_max**2 - r_min**2) + r_min**2)
        self.nu_log = nn.Parameter(torch.log(nu))
        self.theta_log = nn.Parameter(torch.log(angle_draw * 2 * math.pi))
        self.gamma_log = nn.Parameter(0.5 * torch.log(1 - torch.exp(-2 * nu)))
        self.input = nn.Linear(dim, 2 * self.state_dim)  # real rows, then imaginary rows of B
        self.output = nn.Linear(2 * self.state_dim, dim)  # [Re C, -Im C] over [Re h; Im h]
        self.dropout = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(dim)
        reference_init(self.input, self.output)

    def decay(self) -> torch.Tensor:
        """λ (2·D,), complex."""
        return torch.polar(torch.exp(-torch.exp(self.nu_log)), torch.exp(self.theta_log))

    def driven(self, x: torch.Tensor) -> torch.Tensor:
        """γ (B x + b), complex (..., 2·D); computed in float32 (complex bf16 does not exist)."""
        projected = self.input(x).float()
        real, imaginary = projected.split(self.state_dim, dim=-1)
        return torch.complex(real, imaginary) * torch.exp(self.gamma_log)

    def read(self, states: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The layer's output from its states (complex, ..., 2·D) and inputs x (..., D)."""
        read = self.output(torch.cat([states.real, states.imag], dim=-1)).to(x.dtype)
        return self.norm(self.dropout(read) + x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.read(linear_scan(self.decay(), self.driven(x)), x)

    def step(self, state: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output (B, D), next state (B, 2·D)) after one input x (B, D) from ``state``."""
        state = self.decay() * state + self.driven(x)
        return self.read(state, x), state


class FeedForward(nn.Module):
    """Position-wise D -> 4·D -> D with GELU, a residual and post-LayerNorm."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.expand = nn.Linear(config.dim, FFN_MULTIPLIER * config.dim)
        self.contract = nn.Linear(FFN_MULTIPLIER * config.dim, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(config.dim)
        reference_init(self.expand, self.contract)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(F.gelu(self.expand(x)))
        return self.norm(self.dropout(self.contract(hidden)) + x)


class LRUBlock(nn.Module):
    """An LRU layer then a feed-forward layer."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.recurrence = LRULayer(config)
        self.feed_forward = FeedForward(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feed_forward(self.recurrence(x))

    def step(self, state: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, state = self.recurrence.step(state, x)
        return self.feed_forward(out), state


class LRURec(SequenceEncoder):
    """Stacked LRU blocks over item + action embeddings; ``step`` is the same encoder one event at a time."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        self.inputs = InputEmbedding(config, positional=False)
        self.input_norm = nn.LayerNorm(config.dim)
        self.blocks = nn.ModuleList(LRUBlock(config) for _ in range(config.num_blocks))

    def _embed(self, item_emb: torch.Tensor, action_ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.input_norm(self.inputs(item_emb, action_ids, valid))

    def encode(
        self, item_emb: torch.Tensor, action_ids: torch.Tensor, timestamps: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        # Right padding follows every real position, so the causal recurrence never reads it.
        x = self._embed(item_emb, action_ids, valid)
        for block in self.blocks:
            x = block(x)
        return x

    def initial_state(self, batch: int, device: torch.device | None = None) -> LRUState:
        """The per-block states of ``batch`` empty histories."""
        dim = 2 * self.config.dim
        return [torch.zeros(batch, dim, dtype=torch.complex64, device=device) for _ in self.blocks]

    def step(self, state: LRUState, item_emb: torch.Tensor, action_ids: torch.Tensor) -> tuple[torch.Tensor, LRUState]:
        """(hidden (B, D), next state) after one more event per row: its item's embedding (B, D)
        and action id (B,). The hidden state equals ``encode``'s at that position, in O(D²) per
        block, whatever the history's length."""
        valid = torch.ones(item_emb.shape[0], 1, dtype=torch.bool, device=item_emb.device)
        x = self._embed(item_emb.unsqueeze(1), action_ids.unsqueeze(1), valid).squeeze(1)
        next_state = []
        for block, block_state in zip(self.blocks, state, strict=True):
            x, block_state = cast(LRUBlock, block).step(block_state, x)
            next_state.append(block_state)
        return x, next_state

"""What a scaling sweep runs: a grid (or an explicit list) over encoder, width, depth, history
length, data fraction and seed, expanded into trials, each an ordinary ``TrainConfig``.

A spec is YAML or JSON (``streamrec sweep SPEC``), the Dagster asset's config, or command-line
options. Every trial shares ``train`` (any TrainConfig fields, over the sweep's small defaults)
and differs only in its point; a trial's key is the hash of its whole config and worker count,
so a resumed sweep knows a finished trial whatever order the spec lists it in.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features.subsample import check_fraction
from infra.model_options import merge
from training.common.config import EncoderKind
from training.common.errors import TrainingError
from training.retrieval.config import TrainConfig

ENCODERS: tuple[str, ...] = get_args(EncoderKind)
# A trial's cost is kept small unless the spec's ``train`` says otherwise: early stopping after 3
# epochs without a better validation NDCG@10, at most 20 epochs.
TRIAL_DEFAULTS: dict[str, Any] = {"epochs": 20, "patience": 3}
EvalProtocol = Literal["seen_filtered", "all_items"]  # training.retrieval.evaluation.PROTOCOLS
GRID_AXES = ("encoders", "dims", "blocks", "max_lens", "data_fractions", "seeds")


class SweepError(TrainingError):
    """A sweep that cannot run as given (bad spec, sizes the cluster cannot hold, unknown run)."""


class TrialPoint(BaseModel):
    """One point of an explicit trial list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    encoder: str = Field(description="A registered encoder: " + ", ".join(ENCODERS) + ".")
    dim: int = Field(ge=2, description="Embedding and hidden width.")
    blocks: int = Field(ge=1, description="Stacked blocks (encoder.num_blocks).")
    max_len: int = Field(ge=2, description="Longest history read (encoder.max_len).")
    data_fraction: float = Field(1.0, description="Share of the train split's users, in (0, 1].")
    seed: int = Field(0, description="Seed of the trial's run.")

    @field_validator("encoder")
    @classmethod
    def _registered(cls, encoder: str) -> str:
        return check_encoder(encoder)

    @field_validator("data_fraction")
    @classmethod
    def _fraction(cls, fraction: float) -> float:
        return check_fraction(fraction)

    def label(self) -> str:
        """A short readable name: ``hstu d32 b2 L50 f0.5`` (`` s1`` for a seed other than 0)."""
        seed = f" s{self.seed}" if self.seed else ""
        return f"{self.encoder} d{self.dim} b{self.blocks} L{self.max_len} f{self.data_fraction:g}{seed}"


class SweepSpec(BaseModel):
    """A sweep: the grid's axes (every combination is a trial) or ``trials`` (exactly those),
    the TrainConfig fields all trials share, and how each runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("", description="Names the MLflow parent run (default sweep-<time>).")
    encoders: tuple[str, ...] = Field(("hstu",), description="Encoders: " + ", ".join(ENCODERS) + ".")
    dims: tuple[Annotated[int, Field(ge=2)], ...] = Field((16, 32), description="Widths (encoder.dim).")
    blocks: tuple[Annotated[int, Field(ge=1)], ...] = Field((1, 2), description="Depths (encoder.num_blocks).")
    max_lens: tuple[Annotated[int, Field(ge=2)], ...] = Field((50,), description="History lengths (encoder.max_len).")
    data_fractions: tuple[float, ...] = Field((0.5, 1.0), description="Shares of the train split's users.")
    seeds: tuple[int, ...] = Field((0,), description="Seeds; each point runs once per seed.")
    trials: tuple[TrialPoint, ...] | None = Field(
        None, description="An explicit list of points instead of the grid (then give no grid axis)."
    )
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="TrainConfig fields every trial shares, over the sweep's defaults (epochs 20, patience 3), "
        "nested as in a `streamrec train --config` file. SASRec's ffn_dim follows each trial's dim unless given.",
    )
    protocol: EvalProtocol = Field(
        "seen_filtered",
        description="Whose validation HR/NDCG the compute and performance laws fit: seen_filtered (the user's "
        "history removed, as the HSTU reference evaluates) or all_items (nothing removed; for data whose users "
        "mostly return to items they had, such as wikipedia.txt, where seen_filtered metrics are near 0).",
    )
    workers: int = Field(1, ge=1, description="Ray Train workers per trial (trials run side by side).")
    max_concurrent: int = Field(0, ge=0, description="Most trials at once; 0 = as many as the cluster holds.")

    @field_validator("encoders")
    @classmethod
    def _registered(cls, encoders: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_encoder(encoder) for encoder in encoders)

    @field_validator("data_fractions")
    @classmethod
    def _fractions(cls, fractions: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(check_fraction(fraction) for fraction in fractions)

    @model_validator(mode="after")
    def _grid_or_list(self) -> SweepSpec:
        if self.trials is not None:
            given = sorted(set(GRID_AXES) & self.model_fields_set)
            if given:
                raise ValueError(f"give either the grid ({', '.join(given)}) or trials, not both")
            if not self.trials:
                raise ValueError("trials is empty: list at least one trial")
            return self
        empty = [axis for axis in GRID_AXES if not getattr(self, axis)]
        if empty:
            raise ValueError(f"the grid is empty: {', '.join(empty)} has no values")
        return self

    def points(self) -> list[TrialPoint]:
        """The sweep's points: the explicit list, or every combination of the grid's axes."""
        if self.trials is not None:
            return list(self.trials)
        return [
            TrialPoint(encoder=e, dim=d, blocks=b, max_len=m, data_fraction=f, seed=s)
            for e, d, b, m, f, s in itertools.product(
                self.encoders, self.dims, self.blocks, self.max_lens, self.data_fractions, self.seeds
            )
        ]

    def trials_to_run(self) -> list[Trial]:
        """Every point as a Trial; a point whose config TrainConfig rejects, or a point given
        twice, is a SweepError naming it."""
        trials: dict[str, Trial] = {}
        for point in self.points():
            trial = Trial.of(point, self.train, self.workers)
            if trial.key in trials:
                raise SweepError(f"trial {point.label()} is listed twice")
            trials[trial.key] = trial
        return list(trials.values())


@dataclass(frozen=True)
class Trial:
    """One training run of a sweep: its point, its whole config and its key."""

    key: str
    point: TrialPoint
    config: TrainConfig
    workers: int

    @property
    def label(self) -> str:
        return self.point.label()

    @classmethod
    def of(cls, point: TrialPoint, train: dict[str, Any], workers: int) -> Trial:
        """The trial of ``point`` over the shared ``train`` fields (a SweepError names the point
        when TrainConfig rejects the result)."""
        shared = merge(TRIAL_DEFAULTS, train)
        encoder = {"ffn_dim": point.dim, **shared.get("encoder", {})}
        encoder.update(kind=point.encoder, dim=point.dim, num_blocks=point.blocks, max_len=point.max_len)
        fields = {**shared, "encoder": encoder, "data_fraction": point.data_fraction, "seed": point.seed}
        try:
            config = TrainConfig.model_validate(fields)
        except ValidationError as error:
            raise SweepError(f"trial {point.label()}: invalid training config: {problems(error)}") from error
        return cls(trial_key(config, workers), point, config, workers)


def trial_key(config: TrainConfig, workers: int) -> str:
    """12 hex digits naming what a trial computes: its config and its worker count."""
    text = json.dumps({"config": config.model_dump(mode="json"), "workers": workers}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_encoder(encoder: str) -> str:
    """``encoder`` when it is registered; a ValueError listing the registered ones otherwise."""
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}: the registered encoders are {', '.join(ENCODERS)}")
    return encoder


def parse_spec(data: dict[str, Any]) -> SweepSpec:
    """The SweepSpec of ``data`` whose every trial TrainConfig accepts; a SweepError with every
    problem of the spec, or naming the first trial TrainConfig rejects."""
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as error:
        raise SweepError(f"invalid sweep spec: {problems(error)}") from error
    spec.trials_to_run()
    return spec


def problems(error: ValidationError) -> str:
    """A pydantic error's problems on one line: ``field.path: message; ...``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in error.errors())

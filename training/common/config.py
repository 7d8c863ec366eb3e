"""Configuration both model families share: the sequential encoder's architecture and how the
sharded item table is trained and laid out.

``TrainConfig`` (retrieval) and ``RankingTrainConfig`` (ranking) each hold an ``EncoderConfig``
and a ``TableConfig``; ``training.common.sharding`` reads only the latter.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

EncoderKind = Literal["hstu", "sasrec", "fuxi", "lrurec", "bert4rec"]
# What the encoder is trained to predict: the next event's item from each position (causal models),
# or the items hidden behind mask tokens (BERT4Rec); auto = masked_item for bert4rec, else next_item.
Objective = Literal["auto", "next_item", "masked_item"]
# The retrieval losses of ``training.common.loss`` (named here, so configs import no torch).
LossKind = Literal["sampled", "sampled_logq", "full"]
EmbeddingOptimizer = Literal["auto", "adam", "rowwise_adagrad", "adagrad", "sgd"]
Sharding = Literal["row_wise", "table_wise"]
# How a query and an item row are scored (``training.common.scoring``): cosine similarity (unit rows,
# divided by the loss's temperature) or the plain dot product of the raw rows.
Scoring = Literal["cosine", "dot"]
# Where the Ray Train workers train (``training.common.device`` resolves ``auto``).
DeviceChoice = Literal["auto", "cpu", "cuda"]
# The encoder's forward in float32, or under bf16 autocast; auto = bf16 on cuda, fp32 on cpu.
PrecisionChoice = Literal["auto", "fp32", "bf16"]
# How HSTU computes attention: all (L x L) scores at once, or blocks of queries (``training.common.hstu``).
HSTUAttention = Literal["reference", "chunked"]


class EncoderConfig(BaseModel):
    """Architecture of a sequential encoder (HSTU, SASRec, FuXi-alpha, LRURec or BERT4Rec), its item
    table and the objective it is trained with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: EncoderKind = Field("hstu", description="hstu, sasrec, fuxi (FuXi-alpha), lrurec or bert4rec.")
    dim: int = Field(50, ge=2, description="Embedding and hidden width.")
    num_blocks: int = Field(2, ge=1, description="Stacked attention blocks.")
    num_heads: int = Field(1, ge=1, description="Attention heads; dim must divide by it.")
    max_len: int = Field(200, ge=2, description="Longest history the encoder reads (the last events).")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout on inputs and block outputs.")
    ffn_dim: int = Field(50, ge=1, description="SASRec: width of the ReLU feed-forward layer.")
    time_buckets: int = Field(
        128, ge=1, description="HSTU, FuXi-alpha: buckets of log time gaps in the relative bias / temporal channel."
    )
    use_actions: bool = Field(True, description="Add an action-type embedding to every input position.")
    scoring: Scoring = Field(
        "cosine",
        description="How queries score items, in the loss, evaluation and serving alike: cosine (L2-normalised "
        "query and item rows; the loss divides by temperature) or dot (the raw rows' dot product, no temperature, "
        "as RecBole's SASRec).",
    )
    sasrec_reference_init: bool = Field(
        False,
        description="SASRec: RecBole's initialisation (every linear and attention weight N(0, 0.02), biases zero) "
        "instead of PyTorch's defaults.",
    )
    sasrec_post_norm: bool = Field(
        False,
        description="SASRec: RecBole's layout: the summed input embeddings (item, unscaled, + position) "
        "LayerNorm-ed and dropped out, post-LayerNorm blocks LN(x + sublayer(x)) and no final LayerNorm; "
        "off: scaled inputs, pre-LayerNorm blocks x + sublayer(LN(x)) and a final LayerNorm.",
    )
    hstu_absolute_positions: bool = Field(
        False, description="HSTU: add a learned absolute position embedding to the input, as the reference does."
    )
    hstu_uvqk_bias: bool = Field(True, description="HSTU: a bias on the U/V/Q/K projection (the reference has none).")
    hstu_norm_affine: bool = Field(
        True, description="HSTU: learnable LayerNorm scale and shift (the reference's norms have none)."
    )
    hstu_reference_init: bool = Field(
        True,
        description="HSTU: the reference's initialisation (U/V/Q/K and relative biases N(0, 0.02), output "
        "Xavier-uniform, positions N(0, 1/dim)) instead of PyTorch defaults and zero biases.",
    )
    hstu_attention: HSTUAttention = Field(
        "reference",
        description="HSTU: reference (all (B, H, L, L) scores at once) or chunked (blocks of hstu_attention_chunk "
        "queries, each recomputed in backward: (B, H, chunk, L) scores held, one more attention forward).",
    )
    hstu_attention_chunk: int = Field(
        64, ge=1, description="HSTU, hstu_attention chunked: queries per block of the attention."
    )
    fuxi_absolute_positions: bool = Field(
        True,
        description="FuXi-alpha: add a learned absolute position embedding to the input, as the reference does "
        "(off: only the positional channel carries positions).",
    )
    lrurec_r_min: float = Field(
        0.8, gt=0.0, lt=1.0, description="LRURec: smallest initial modulus of the recurrence's eigenvalues."
    )
    lrurec_r_max: float = Field(
        0.99, gt=0.0, lt=1.0, description="LRURec: largest initial modulus of the recurrence's eigenvalues."
    )

    objective: Objective = Field(
        "auto",
        description="next_item (each position predicts the next event's item) or masked_item (items replaced "
        "by a mask token are predicted; queries append one; bert4rec only); auto = masked_item for bert4rec, "
        "else next_item.",
    )
    mask_prob: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="masked_item: share of each history's items masked (the reference's count, "
        "min(int(max_len * p), max(1, round(n * p))); 0.2 is its ML-1M setting).",
    )
    bert4rec_causal: bool = Field(
        False,
        description="BERT4Rec: a causal attention mask (the reference's AR setting; its AE default is off). "
        "Needed for objective next_item.",
    )
    matryoshka_dims: tuple[int, ...] = Field(
        (),
        description="Matryoshka (fMRLRec): strictly increasing prefix widths below dim, e.g. 16,32; the loss is "
        "the mean of the loss on each prefix of queries and items and on the full width.",
    )

    @field_validator("matryoshka_dims", mode="before")
    @classmethod
    def _dims_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return tuple(int(part) for part in value.replace(" ", "").split(",") if part)
            except ValueError as error:
                raise ValueError(f"matryoshka_dims {value!r} is not a comma-separated list of widths") from error
        return value

    @model_validator(mode="after")
    def _nested_prefixes(self) -> EncoderConfig:
        dims = self.matryoshka_dims
        if any(low >= high for low, high in zip(dims, dims[1:], strict=False)) or any(
            not 2 <= width < self.dim for width in dims
        ):
            raise ValueError(
                f"matryoshka_dims {','.join(map(str, dims))} must be strictly increasing widths from 2 to "
                f"{self.dim - 1} (below dim {self.dim}), comma-separated"
            )
        return self

    @model_validator(mode="after")
    def _objective_fits_encoder(self) -> EncoderConfig:
        objective = self.training_objective
        if objective == "masked_item" and self.kind != "bert4rec":
            raise ValueError(
                f"objective masked_item needs kind bert4rec, not {self.kind}: its input has the mask token"
            )
        if objective == "next_item" and self.kind == "bert4rec" and not self.bert4rec_causal:
            raise ValueError(
                "bert4rec with objective next_item needs bert4rec_causal (a bidirectional position sees its "
                "target); allowed: objective masked_item or auto, or next_item with bert4rec_causal"
            )
        return self

    @property
    def training_objective(self) -> Literal["next_item", "masked_item"]:
        """The objective with ``auto`` resolved for the encoder kind."""
        if self.objective == "auto":
            return "masked_item" if self.kind == "bert4rec" else "next_item"
        return self.objective

    @model_validator(mode="after")
    def _lrurec_ring(self) -> EncoderConfig:
        if self.lrurec_r_min >= self.lrurec_r_max:
            raise ValueError(f"lrurec_r_min {self.lrurec_r_min} must be below lrurec_r_max {self.lrurec_r_max}")
        return self

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> EncoderConfig:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        return self


class TableConfig(BaseModel):
    """How the sharded item table is trained and laid out: its fused optimizer, its learning
    rate and the sharding the planner may choose."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embedding_optimizer: EmbeddingOptimizer = Field(
        "auto",
        description="Optimizer of the item table, applied in backward (adam on CPU: the dense kernel, "
        "row_wise only); auto = adam on GPU, rowwise_adagrad on CPU.",
    )
    embedding_lr: float = Field(
        0.0, ge=0, description="Learning rate of the item table; 0 = lr for adam, 0.05 otherwise."
    )
    sharding: Sharding = Field("row_wise", description="How the planner may shard the item table.")

    def optimizer(self, use_gpu: bool, dense_lr: float) -> tuple[str, float]:
        """(optimizer name, learning rate) of the table: ``auto`` resolved for the device, a
        learning rate of 0 resolved from the dense parameters' ``dense_lr``."""
        name = self.embedding_optimizer
        if name == "auto":
            # On CPU, Adam (the dense kernel) reached row-wise Adagrad's quality but not sooner and
            # updates the whole shard every batch (benchmarks/results/train_losses_wikipedia.json).
            name = "adam" if use_gpu else "rowwise_adagrad"
        return name, self.embedding_lr or (dense_lr if name == "adam" else 0.05)


TABLE_FIELDS = frozenset(TableConfig.model_fields)


def nest_table_fields(data: Any) -> Any:
    """A run config's input with TableConfig fields given at the top level (as config files and
    job records written before the table had its own config do) moved into ``table``."""
    if not isinstance(data, dict) or not TABLE_FIELDS & data.keys():
        return data
    flat = {key: data[key] for key in TABLE_FIELDS & data.keys()}
    table = data.get("table", {})
    table = table.model_dump(exclude_unset=True) if isinstance(table, TableConfig) else dict(table)
    both = sorted(flat.keys() & table.keys())
    if both:
        raise ValueError(f"{', '.join(both)} given both at the top level and in table")
    return {**{key: value for key, value in data.items() if key not in TABLE_FIELDS}, "table": {**table, **flat}}

"""Typed configurations of the retrieval models and of a training run.

Defaults are the reference hyperparameters of the HSTU repository on MovieLens-1M
(DESIGN section 4): dim 50, 2 blocks, 1 head, max_len 200, batch 128, Adam lr 1e-3 with
betas 0.9/0.98, 128 uniform negatives, temperature 0.05, dropout 0.2.
"""

from __future__ import annotations

from typing import Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, model_validator

EncoderKind = Literal["hstu", "sasrec"]
EmbeddingOptimizer = Literal["auto", "adam", "rowwise_adagrad", "adagrad", "sgd"]
Sharding = Literal["row_wise", "table_wise"]


class LossOptions(TypedDict):
    """The keyword options ``training.common.loss.retrieval_loss`` takes from a TrainConfig."""

    temperature: float
    in_batch_negatives: int
    ntr_weight: float


class EncoderConfig(BaseModel):
    """Architecture of a sequential encoder (HSTU or SASRec) and its item table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: EncoderKind = Field("hstu", description="hstu or sasrec.")
    dim: int = Field(50, ge=2, description="Embedding and hidden width.")
    num_blocks: int = Field(2, ge=1, description="Stacked attention blocks.")
    num_heads: int = Field(1, ge=1, description="Attention heads; dim must divide by it.")
    max_len: int = Field(200, ge=2, description="Longest history the encoder reads (the last events).")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout on inputs and block outputs.")
    ffn_dim: int = Field(50, ge=1, description="SASRec: width of the ReLU feed-forward layer.")
    time_buckets: int = Field(128, ge=1, description="HSTU: buckets of log2 time gaps in the relative bias.")
    use_actions: bool = Field(True, description="Add an action-type embedding to every input position.")
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

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> EncoderConfig:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        return self


class TrainConfig(BaseModel):
    """Everything that decides what a training run computes (the MLflow params)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    epochs: int = Field(20, ge=1, description="Most epochs to train (early stopping may end sooner).")
    batch_size: int = Field(128, ge=1, description="Sequences per batch on each worker.")
    length_bucketing: bool = Field(
        True, description="Group training batches by history length, so batches carry little padding."
    )
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the dense (data-parallel) parameters.")
    betas: tuple[float, float] = Field((0.9, 0.98), description="Adam betas of the dense parameters.")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay of the dense parameters.")
    embedding_optimizer: EmbeddingOptimizer = Field(
        "auto",
        description="Fused optimizer of the sharded item table, applied in backward; auto = adam on GPU, "
        "rowwise_adagrad on CPU (FBGEMM's CPU kernels have no Adam).",
    )
    embedding_lr: float = Field(
        0.0, ge=0, description="Learning rate of the item table; 0 = lr for adam, 0.05 otherwise."
    )
    warm_start_lr_scale: float = Field(
        0.1,
        gt=0,
        le=1,
        description="A warm-started run trains the item table at this fraction of its learning rate: the "
        "table's optimizer state starts afresh, and row-wise Adagrad's first steps, its largest, would undo "
        "the trained rows.",
    )
    num_negatives: int = Field(128, ge=1, description="Uniform random negatives per batch (shared by its positions).")
    in_batch_negatives: int = Field(128, ge=0, description="Negatives drawn from the batch's own target items.")
    temperature: float = Field(0.05, gt=0, description="Softmax temperature over cosine similarities.")
    ntr_weight: float = Field(
        0.1, ge=0, description="Weight of the not-to-recommend term for skipped/disliked next items; 0 disables."
    )
    eval_ks: tuple[int, ...] = Field((10, 50, 200), description="Cut-offs of HR@K and NDCG@K.")
    eval_batch_size: int = Field(256, ge=1, description="Sequences per evaluation batch.")
    sampled_eval: bool = Field(False, description="Rank the target among 100 random unseen items instead of all.")
    eval_negatives: int = Field(100, ge=1, description="Negatives per row in sampled evaluation.")
    selection_metric: str = Field("ndcg_10", description="Validation metric that selects the best epoch.")
    patience: int = Field(5, ge=0, description="Stop after this many epochs without a better val metric; 0 = never.")
    sharding: Sharding = Field("row_wise", description="How the planner may shard the item table.")
    seed: int = Field(0, description="Seed of initialisation, shuffling and negative sampling.")
    fail_once_after_epoch: int = Field(
        0, ge=0, description="Fault injection: one worker exits once after this epoch's checkpoint; 0 = never."
    )

    @model_validator(mode="after")
    def _known_selection_metric(self) -> TrainConfig:
        known = {f"{name}_{k}" for name in ("hr", "ndcg") for k in self.eval_ks} | {"mrr"}
        if self.selection_metric not in known:
            raise ValueError(f"selection_metric {self.selection_metric!r} is not one of {sorted(known)}")
        return self

    def table_optimizer(self, use_gpu: bool) -> tuple[str, float]:
        """(optimizer name, learning rate) of the sharded item table."""
        name = self.embedding_optimizer
        if name == "auto":
            name = "adam" if use_gpu else "rowwise_adagrad"
        lr = self.embedding_lr or (self.lr if name == "adam" else 0.05)
        return name, lr

    def warm_started(self, use_gpu: bool) -> TrainConfig:
        """This config for a run that starts from a trained model: the item table's learning
        rate times ``warm_start_lr_scale``, stated as ``embedding_lr`` so MLflow records what ran."""
        _, lr = self.table_optimizer(use_gpu)
        return self.model_copy(update={"embedding_lr": lr * self.warm_start_lr_scale})

    def loss_options(self) -> LossOptions:
        """The keyword options ``training.common.loss.retrieval_loss`` takes from this config."""
        return {
            "temperature": self.temperature,
            "in_batch_negatives": self.in_batch_negatives,
            "ntr_weight": self.ntr_weight,
        }

    def flat_params(self) -> dict[str, str]:
        """Every field as a flat {name: value} map for MLflow params (encoder.* prefixed)."""
        params = {f"encoder.{key}": str(value) for key, value in self.encoder.model_dump().items()}
        params.update({key: str(value) for key, value in self.model_dump(exclude={"encoder"}).items()})
        return params

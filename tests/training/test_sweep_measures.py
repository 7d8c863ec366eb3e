"""What a sweep measures of each trial: parameters, FLOPs, approximate entropy, validation
cross-entropy over the catalogue, and the refusal of trials the cluster cannot hold."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from features.examples import SequenceExamples
from training.common.config import EncoderConfig
from training.retrieval.evaluation import cross_entropy
from training.sweep.data import DataStats, approximate_entropy, data_stats, dataset_apen
from training.sweep.plan import PlannedTrial, fit_to_cluster
from training.sweep.sizing import GIB, model_size, training_flops, worker_memory_bytes
from training.sweep.spec import SweepError, parse_spec


def _examples(histories: list[list[int]], targets: list[int] | None = None) -> SequenceExamples:
    width = max(len(h) for h in histories)
    items = np.array([h + [0] * (width - len(h)) for h in histories])
    return SequenceExamples(
        user_ids=np.array([f"u{i}" for i in range(len(histories))]), item_indices=items,
        action_ids=np.where(items > 0, 2, 0), timestamps=np.where(items > 0, 1_000, 0),
        lengths=np.array([len(h) for h in histories]), targets=np.array(targets or [0] * len(histories)),
        num_items=int(items.max()),
    )  # fmt: skip


def test_embedding_parameters_are_the_tables_and_the_rest_is_non_embedding() -> None:
    small = model_size(EncoderConfig(kind="sasrec", dim=8, num_blocks=1, max_len=20, ffn_dim=8), num_items=100)
    deeper = model_size(EncoderConfig(kind="sasrec", dim=8, num_blocks=2, max_len=20, ffn_dim=8), num_items=100)
    # Item table (101 x 8) + action types + absolute positions (20 x 8).
    assert small.embedding > 101 * 8 + 20 * 8 and deeper.embedding == small.embedding
    assert deeper.non_embedding > small.non_embedding > 0  # a block is non-embedding parameters
    bigger_catalogue = model_size(EncoderConfig(kind="sasrec", dim=8, num_blocks=1, max_len=20, ffn_dim=8), 1_000)
    assert bigger_catalogue.non_embedding == small.non_embedding
    assert bigger_catalogue.embedding - small.embedding == 900 * 8


def test_training_flops_grow_with_the_model_and_the_tokens() -> None:
    config = parse_spec({"dims": [16], "blocks": [1], "data_fractions": [1.0]}).trials_to_run()[0].config
    size = model_size(config.encoder, 500)
    flops = training_flops(config, size, 500, mean_length=30.0, tokens=1_000)
    assert flops == pytest.approx(
        3 * 1_000 * (2 * size.non_embedding + 2 * 1 * 30 * 16 + 2 * 16 * 500)  # 500 items: the full softmax
    )
    assert training_flops(config, size, 500, 30.0, 2_000) == pytest.approx(2 * flops)


def test_approximate_entropy_is_zero_for_repetition_and_grows_with_surprise() -> None:
    assert approximate_entropy(np.array([5] * 30)) == pytest.approx(0.0)
    periodic = approximate_entropy(np.array([1, 2, 3] * 20))  # each item always leads to the same next one
    surprising = approximate_entropy(np.random.default_rng(0).integers(1, 6, size=60))  # 5 items, any order
    assert abs(periodic) < 0.05 and surprising > 1.0
    # Pincus's definition by hand for 1,1,2,1 (m = 1): Phi_1 - Phi_2.
    phi1 = (3 * math.log(3 / 4) + math.log(1 / 4)) / 4
    phi2 = (3 * math.log(1 / 3)) / 3
    assert approximate_entropy(np.array([1, 1, 2, 1]), m=1) == pytest.approx(phi1 - phi2)
    with pytest.raises(ValueError, match="at least 3 items"):
        approximate_entropy(np.array([1, 2]))


def test_data_stats_count_the_subsample_users_tokens_and_entropy() -> None:
    rows = _examples([[1, 2, 3, 4, 5], [1, 1, 1, 1], [2, 3]])
    stats = data_stats(rows, 1.0)
    assert stats == DataStats(users=3, tokens=11, mean_length=11 / 3, apen=stats.apen)
    assert stats.apen == pytest.approx(np.mean([approximate_entropy(np.array(h)) for h in ([1, 2, 3, 4, 5], [1] * 4)]))
    assert dataset_apen(_examples([[1, 2]])) == 0.0  # rows shorter than 3 events are left out


class _Scorer:
    """Fixed scores (B, N + 1) per row; index 0 is padding."""

    def __init__(self, scores: list[list[float]]) -> None:
        self.table = torch.tensor(scores)
        self.num_items = self.table.shape[1] - 1

    def queries(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.arange(len(batch["targets"]), dtype=torch.float32).unsqueeze(1)

    def score_chunks(self, queries: torch.Tensor, chunk_items: int = 2) -> Iterator[tuple[int, torch.Tensor]]:
        rows = self.table[queries[:, 0].long()]
        for start in range(0, self.num_items + 1, chunk_items):
            scores = rows[:, start : start + chunk_items].clone()
            if start == 0:
                scores[:, 0] = float("-inf")
            yield start, scores


def test_validation_cross_entropy_is_the_full_catalogue_softmax_of_the_targets() -> None:
    scores = [[0.0, 0.5, 0.1, 0.9], [0.0, 0.2, 0.8, 0.3]]
    examples = _examples([[1], [3]], targets=[3, 2])
    value = cross_entropy(_Scorer(scores), examples, logit_scale=2.0, chunk_items=2)  # temperature 0.5
    expected = [
        -torch.log_softmax(torch.tensor(row[1:]) / 0.5, dim=0)[target - 1].item()
        for row, target in zip(scores, [3, 2], strict=True)
    ]
    assert value == pytest.approx(sum(expected) / 2, rel=1e-6)


def test_trials_the_cluster_cannot_hold_are_refused_by_name_before_any_starts() -> None:
    spec = parse_spec({"dims": [8, 512], "blocks": [1, 8], "max_lens": [20], "data_fractions": [1.0], "workers": 2})
    planned = []
    for trial in spec.trials_to_run():
        size = model_size(trial.config.encoder, 1_000_000)
        memory = 2 * worker_memory_bytes(trial.config, size, 1_000_000, 2)
        planned.append(PlannedTrial(trial, DataStats(10, 100, 10.0, 1.0), size, memory))
    small = [p for p in planned if p.trial.config.encoder.dim == 8]
    assert fit_to_cluster(small, 1.0, {"CPU": 4.0, "memory": 64 * GIB}) == 2  # 2 trials of 2 one-CPU workers
    assert fit_to_cluster(small, 1.0, {"CPU": 1.0 * 8, "memory": small[0].memory_bytes * 1.5}) == 1  # memory-bound
    with pytest.raises(SweepError) as error:
        fit_to_cluster(planned, 1.0, {"CPU": 4.0, "memory": 12 * GIB})
    message = str(error.value)
    assert "trial hstu d512 b8 L20 f1: needs about" in message and "the cluster offers 12.0 GiB" in message
    assert "hstu d8 b1" not in message  # only the trials that do not fit are named
    with pytest.raises(
        SweepError, match=r"trial hstu d8 b1 L20 f1: 2 worker\(s\) x 1 CPU need 2 CPUs, the cluster offers 1"
    ):
        fit_to_cluster(small, 1.0, {"CPU": 1.0, "memory": 64 * GIB})
    on_gpus = [PlannedTrial(p.trial, p.data, p.size, p.memory_bytes, gpus=2) for p in small]
    assert fit_to_cluster(on_gpus, 1.0, {"CPU": 16.0, "GPU": 4.0, "memory": 64 * GIB}) == 2  # GPU-bound
    with pytest.raises(
        SweepError, match=r"trial hstu d8 b1 L20 f1: 2 worker\(s\) on cuda need 2 GPUs, the cluster offers 1"
    ):
        fit_to_cluster(on_gpus, 1.0, {"CPU": 16.0, "GPU": 1.0, "memory": 64 * GIB})
    empty = [PlannedTrial(small[0].trial, DataStats(0, 0, 0.0, 0.0), small[0].size, small[0].memory_bytes)]
    with pytest.raises(SweepError, match="no training users at data fraction 1"):
        fit_to_cluster(empty, 1.0, {"CPU": 4.0, "memory": 64 * GIB})

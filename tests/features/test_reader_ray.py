"""The reader inside Ray: workers load their own examples; the Ray Dataset view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from featuredata import write_sequences

from features.examples import BATCH_KEYS
from features.reader import latest_versions, load_examples, to_ray_dataset
from infra.settings import Settings, get_settings

USERS = {
    f"u{user:02d}": [(user % 7 + 1, "click", 10 * step + user) for step in range(user % 5 + 1)] for user in range(23)
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = get_settings(home=tmp_path)
    write_sequences(settings, USERS, num_items=7)
    return settings


def test_workers_load_their_shards_without_spark(ray_head: Settings, settings: Settings) -> None:
    import ray

    versions = latest_versions(settings)

    @ray.remote(num_cpus=0)
    def worker_shard(rank: int) -> list[str]:
        import sys

        examples = load_examples(settings, "train", versions, max_len=4)
        assert "pyspark" not in sys.modules
        shard = examples.shard(rank, 3, seed=5, epoch=0, shuffle=True)
        return shard.user_ids[shard.valid].tolist()

    shards = ray.get([worker_shard.remote(rank) for rank in range(3)])
    assert sorted(sum(shards, [])) == sorted(USERS)
    local = load_examples(settings, "train", versions, max_len=4).shard(1, 3, seed=5, epoch=0, shuffle=True)
    assert shards[1] == local.user_ids[local.valid].tolist()


def test_ray_dataset_holds_the_same_rows(ray_head: Settings, settings: Settings) -> None:
    examples = load_examples(settings, "train", max_len=4)
    rows = to_ray_dataset(examples).take_all()
    assert [row["user_id"] for row in rows] == examples.user_ids.tolist()
    assert np.array_equal(np.stack([row["item_indices"] for row in rows]), examples.item_indices)
    assert np.array_equal(np.array([row["lengths"] for row in rows]), examples.lengths)
    tensors = to_ray_dataset(examples).select_columns(list(BATCH_KEYS))
    batch = next(iter(tensors.iter_torch_batches(batch_size=8)))
    assert tuple(batch["timestamps"].shape) == (8, 4)

"""Device and precision of a run (``training.common.device``), what the driver hands Ray Train
for each device, and the item table's optimizer and kernel per device. Nothing here needs a GPU:
the cuda choices are checked as the decisions and configurations they produce."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from features.reader import FeatureVersions
from infra.settings import get_settings
from tests.pipelinedata import tiny_config
from training.common import driver
from training.common.config import TableConfig
from training.common.device import (
    autocast,
    local_device,
    process_group_backend,
    resolve_device,
    resolve_precision,
)
from training.common.errors import TrainingError
from training.common.sharding import table_kernel
from training.retrieval.config import TrainConfig
from training.retrieval.worker import TrainJob


@pytest.mark.parametrize(
    ("choice", "use_gpu_setting", "gpus", "workers", "expected"),
    [
        ("cpu", True, 8.0, 2, "cpu"),  # a named device wins over the deployment and the cluster
        ("cuda", False, 0.0, 2, "cuda"),  # ... and fails later, in check_resources, if there are no GPUs
        ("auto", False, 0.0, 2, "cpu"),  # the CPU default: nothing changes where there is no GPU
        ("auto", False, 1.0, 2, "cpu"),  # fewer GPUs than workers
        ("auto", False, 2.0, 2, "cuda"),
        ("auto", True, 0.0, 2, "cuda"),  # the deployment's train.use_gpu
    ],
)
def test_auto_is_cuda_when_every_worker_gets_a_gpu(
    choice: Any, use_gpu_setting: bool, gpus: float, workers: int, expected: str
) -> None:
    assert resolve_device(choice, use_gpu_setting=use_gpu_setting, gpus_offered=gpus, workers=workers) == expected


def test_nccl_between_gpus_gloo_on_cpus() -> None:
    assert process_group_backend("cuda") == "nccl"
    assert process_group_backend("cpu") == "gloo"


def test_auto_precision_is_bf16_on_gpus_only() -> None:
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("fp32", "cuda") == "fp32"


def test_bf16_autocast_runs_on_cpu() -> None:
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast("cpu", "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert (a @ b).dtype == torch.float32


def test_the_driver_evaluates_on_its_own_gpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    assert local_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert local_device("cuda") == "cpu" and local_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert local_device("auto") == "cuda" and local_device("cpu") == "cpu"


def test_the_item_table_gets_fused_adam_on_gpus_and_keeps_its_cpu_choice() -> None:
    auto = TableConfig()
    assert auto.optimizer(use_gpu=True, dense_lr=1e-3) == ("adam", 1e-3)
    assert auto.optimizer(use_gpu=False, dense_lr=1e-3) == ("rowwise_adagrad", 0.05)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert table_kernel("adam", cuda) == "fused"  # FBGEMM GPU's Adam kernel, in backward
    assert table_kernel("adam", cpu) == "dense"  # FBGEMM's CPU build has no Adam kernel
    assert table_kernel("rowwise_adagrad", cpu) == "fused"


def test_device_and_precision_are_run_options_recorded_as_params() -> None:
    config = TrainConfig(device="cuda", precision="bf16")
    assert config.flat_params()["device"] == "cuda" and config.flat_params()["precision"] == "bf16"
    assert TrainConfig().device == "auto" and TrainConfig().precision == "auto"
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="tpu")  # type: ignore[arg-type]


def _trainer(home: Path, use_gpu: bool) -> Any:
    job = TrainJob(
        get_settings(home=home), tiny_config(), FeatureVersions(item_vocab=1, user_sequences=1), "run-1", use_gpu
    )
    return driver.torch_trainer(lambda _: None, job, workers=2, storage=str(home / "ray"), run_name="run")


@pytest.mark.parametrize(("use_gpu", "backend"), [(True, "nccl"), (False, "gloo")])
def test_the_trainer_asks_ray_for_one_gpu_per_worker_on_cuda(tmp_path: Path, use_gpu: bool, backend: str) -> None:
    trainer = _trainer(tmp_path, use_gpu)
    scaling = trainer.scaling_config
    assert scaling.use_gpu is use_gpu and scaling.num_workers == 2
    assert scaling.resources_per_worker.get("GPU", 0.0) == (1.0 if use_gpu else 0.0)
    assert trainer.train_run_context.backend_config.backend == backend


def test_run_device_reads_the_clusters_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ray

    settings = get_settings(home=tmp_path)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 2.0})
    assert driver.run_device(settings, "auto", workers=2) == "cuda"
    assert driver.run_device(settings, "auto", workers=4) == "cpu"
    assert driver.run_device(settings, "cpu", workers=2) == "cpu"
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0})
    assert driver.run_device(settings, "auto", workers=1) == "cpu"
    with pytest.raises(TrainingError, match="need one GPU each .* offers 0; use --device cpu"):
        driver.check_resources(settings, 2, use_gpu=True)
    driver.check_resources(settings, 2, use_gpu=False)

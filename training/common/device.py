"""Where a run trains and in which precision: ``auto`` resolved, the process-group backend of
that device, and the autocast its forward passes run under.

``TrainConfig.device`` (``auto``, ``cpu``, ``cuda``) is resolved once, on the driver, against
the Ray cluster the workers run on (not the driver's own devices: a driver on a CPU head node
can start workers on GPU nodes): ``auto`` is ``cuda`` when the deployment says its workers have
GPUs (``train.use_gpu``) or when the cluster offers one GPU per worker, else ``cpu``. On one
machine Ray counts the GPUs that ``torch.cuda.is_available()`` sees, so there ``auto`` is
``cuda`` exactly when torch has a GPU. The resolved device decides the rest: one GPU per Ray
Train worker, NCCL (GPU) or gloo (CPU) as the process-group backend, the item table's ``auto``
optimizer (``training.common.config.TableConfig``) and, with ``precision`` ``auto``, bf16
autocast on GPUs.

No torch at import: the driver resolves devices before it imports the training modules.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Literal

from training.common.config import DeviceChoice, PrecisionChoice

Device = Literal["cpu", "cuda"]
Precision = Literal["fp32", "bf16"]


def resolve_device(choice: DeviceChoice, *, use_gpu_setting: bool, gpus_offered: float, workers: int) -> Device:
    """The device ``choice`` names: ``auto`` = cuda when ``use_gpu_setting`` (the deployment's
    ``train.use_gpu``) or the cluster offers ``gpus_offered`` >= one GPU per worker, else cpu."""
    if choice != "auto":
        return choice
    return "cuda" if use_gpu_setting or (gpus_offered >= workers > 0) else "cpu"


def process_group_backend(device: Device) -> Literal["nccl", "gloo"]:
    """The torch.distributed backend of workers on ``device``: NCCL between GPUs, gloo on CPUs."""
    return "nccl" if device == "cuda" else "gloo"


def resolve_precision(choice: PrecisionChoice, device: Device) -> Precision:
    """The precision ``choice`` names: ``auto`` = bf16 on cuda (as GPU runs always were), fp32 on cpu."""
    if choice != "auto":
        return choice
    return "bf16" if device == "cuda" else "fp32"


def autocast(device: Device, precision: Precision) -> AbstractContextManager[object]:
    """The context a training forward pass runs in: bf16 autocast on ``device`` (CPU included),
    or nothing (float32) for fp32. Losses and optimizer steps stay outside it, in float32."""
    import torch

    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")


def local_device(choice: DeviceChoice) -> Device:
    """The device this process computes on for ``choice`` (the driver's evaluation of the best
    model): cuda when the choice allows it and torch sees a GPU here, else cpu."""
    import torch

    return "cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu"

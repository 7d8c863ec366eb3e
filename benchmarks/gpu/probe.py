"""What this machine offers the GPU benchmark, before anything of the project is imported: torch
and its CUDA device, which packages import, and which benchmark levels can therefore run.

Standard library and torch only, so it answers on a bare GPU machine too::

    python -m benchmarks.gpu.probe      # prints the JSON; exit status 0 when the encoder level can run

Levels (``benchmarks.gpu``): ``encoder`` (the plain model's training step on each device),
``train`` (a Ray Train worker's epoch function on a one-process group: the sharded item table
and its FBGEMM kernels). ``streamrec train`` and ``streamrec sweep`` themselves need the
services (Ray, MLflow, Spark with Java, the lake) besides these.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

# Package (import name) -> the levels that need it.
NEEDS: dict[str, tuple[str, ...]] = {
    "torch": ("encoder", "train"),
    "numpy": ("encoder", "train"),
    "pydantic": ("encoder", "train"),
    "pydantic_settings": ("encoder", "train"),
    "psutil": ("encoder", "train"),
    "pyarrow": ("encoder", "train"),
    "torchrec": ("train",),
    "fbgemm_gpu": ("train",),
    "ray": ("train",),
    "deltalake": ("train",),
    "mlflow": ("train",),
}
LEVELS = ("encoder", "train")


def _version(name: str) -> str | None:
    """The installed version of the package imported as ``name``, None when there is none (found,
    not imported: importing Ray or MLflow takes seconds)."""
    try:
        if importlib.util.find_spec(name) is None:
            return None
    except (ImportError, ValueError):  # a broken or half-removed install
        return None
    for distribution in importlib.metadata.packages_distributions().get(name, []):
        return importlib.metadata.version(distribution)
    return "unknown"


def _fbgemm_build() -> str | None:
    """``cuda`` or ``cpu``: which FBGEMM distribution is installed (only the CUDA one has the GPU
    kernels, fused Adam among them), None when neither is."""
    for distribution, build in (("fbgemm-gpu", "cuda"), ("fbgemm-gpu-genai", "cuda"), ("fbgemm-gpu-cpu", "cpu")):
        try:
            importlib.metadata.distribution(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
        return build
    return None


def _torch() -> dict[str, Any]:
    """torch's version, its CUDA build and the first GPU it sees (name, capability, memory, bf16)."""
    try:
        import torch
    except Exception as error:
        return {"version": None, "error": str(error), "cuda_available": False}
    found: dict[str, Any] = {
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
    }
    if found["cuda_available"]:
        properties = torch.cuda.get_device_properties(0)
        found.update(
            gpus=torch.cuda.device_count(),
            device=properties.name,
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            memory_gib=round(properties.total_memory / 2**30, 1),
            bf16=torch.cuda.is_bf16_supported(),
            nccl=torch.distributed.is_nccl_available(),
        )
    return found


def probe() -> dict[str, Any]:
    """This machine's Python, torch, packages and the benchmark levels they allow; ``lacks``
    names each missing piece and what it rules out."""
    packages = {name: _version(name) for name in NEEDS}
    torch_info = _torch()
    fbgemm = _fbgemm_build()
    lacks = [
        f"{name} (needed by the {' and '.join(levels)} level)" for name, levels in NEEDS.items() if not packages[name]
    ]
    if not torch_info["cuda_available"]:
        lacks.append("a CUDA GPU that torch sees (the cuda paths; the cpu paths still run)")
    elif fbgemm != "cuda":
        lacks.append(f"FBGEMM's CUDA build (installed: {fbgemm or 'none'}; the train level's cuda path needs it)")
    runnable = {level: all(packages[name] for name, needs in NEEDS.items() if level in needs) for level in LEVELS}
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "torch": torch_info,
        "packages": packages,
        "fbgemm_build": fbgemm,
        "java": shutil.which("java"),
        "levels": runnable,
        "lacks": lacks,
    }


def main() -> None:
    """Print the probe as JSON (and write it to ``--out``); exit 1 when not even the encoder
    level can run."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    found = probe()
    text = json.dumps(found, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    sys.exit(0 if found["levels"]["encoder"] else 1)


if __name__ == "__main__":
    main()

"""The GPU benchmark where there is no GPU: the probe says what the machine offers and lacks,
run.sh refuses a real run without a GPU, and its CPU dry run exercises every level and path but
the cuda ones, writing both result files where $OUT points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu.bench import parse_points, paths, spec_configs
from benchmarks.gpu.probe import probe

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "benchmarks" / "gpu" / "run.sh"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OUT": str(tmp_path), "STREAMREC_PYTHON": sys.executable}
    return subprocess.run([str(RUN), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_the_probe_names_what_this_machine_lacks() -> None:
    found = probe()
    assert found["levels"] == {"encoder": True, "train": True}  # the project's environment has every package
    assert found["fbgemm_build"] == "cpu" and not found["torch"]["cuda_available"]
    assert any("CUDA GPU" in missing for missing in found["lacks"])


def test_a_package_that_cannot_be_found_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec

    def broken_ray(name: str, *args: object) -> object:
        if name == "ray":
            raise ValueError("ray.__spec__ is None")  # what a half-removed install gives
        return find_spec(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", broken_ray)
    found = probe()
    assert found["packages"]["ray"] is None and found["levels"] == {"encoder": True, "train": False}
    assert "ray (needed by the train level)" in found["lacks"]


def test_points_are_checked_before_anything_runs() -> None:
    assert [(c.kind, c.dim, c.num_blocks, c.max_len) for c in parse_points("hstu:64:2:100, sasrec:8:1:5")] == [
        ("hstu", 64, 2, 100),
        ("sasrec", 8, 1, 5),
    ]
    for bad in ("hstu:64:2", "hstu:64:two:100", ""):
        with pytest.raises(SystemExit):
            parse_points(bad)


def test_a_sweep_spec_gives_its_largest_trial_of_each_encoder(tmp_path: Path) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        "encoders: [hstu, sasrec]\ndims: [16, 32]\nblocks: [1, 2]\nmax_lens: [20, 50]\ndata_fractions: [0.5, 1.0]\n"
        "train: {loss: full, batch_size: 64}\n"
    )
    configs = spec_configs(spec)
    assert [(c.encoder.kind, c.encoder.dim, c.encoder.num_blocks, c.encoder.max_len) for c in configs] == [
        ("hstu", 32, 2, 50),
        ("sasrec", 32, 2, 50),
    ]
    assert all(c.loss == "full" and c.batch_size == 64 for c in configs)  # the spec's training fields
    spec.write_text("encoders: [nope]\n")
    with pytest.raises(SystemExit, match="--spec: .*unknown encoder 'nope'"):
        spec_configs(spec)


def test_a_gpu_run_measures_the_cpu_path_and_each_gpu_path() -> None:
    names = [path.name for path in paths(dry_run=False, gpu=True, kind="hstu")]
    assert names == ["cpu_fp32", "cuda_fp32", "cuda_bf16", "cuda_bf16_chunked"]
    assert [path.name for path in paths(dry_run=False, gpu=True, kind="sasrec")] == [
        "cpu_fp32",
        "cuda_fp32",
        "cuda_bf16",
    ]
    assert [path.name for path in paths(dry_run=True, gpu=False, kind="hstu")] == [
        "cpu_fp32",
        "cpu_bf16",
        "cpu_fp32_chunked",
    ]


def test_without_a_gpu_only_the_dry_run_runs(tmp_path: Path) -> None:
    refused = _run(tmp_path)
    assert refused.returncode == 4 and "with a CUDA GPU" in refused.stderr

    done = _run(tmp_path, "--dry-run", "--points", "hstu:8:1:6", "--items", "50", "--batch-size", "4",
                "--steps", "1", "--warmup", "1", "--seconds", "1")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lacks: a CUDA GPU" in done.stdout
    assert json.loads((tmp_path / "gpu_probe.json").read_text())["levels"]["train"]
    result = json.loads((tmp_path / "gpu_dry_run.json").read_text())
    measured = [(row["level"], row["path"]) for row in result["rows"]]
    assert measured == [
        ("encoder", "cpu_fp32"),
        ("encoder", "cpu_bf16"),
        ("encoder", "cpu_fp32_chunked"),
        ("train", "cpu_fp32"),
        ("train", "cpu_bf16"),
    ]
    assert all(row["sequences_per_s"] > 0 for row in result["rows"])
    saved = {row["path"]: row["saved_for_backward_mib"] for row in result["rows"] if row["level"] == "encoder"}
    assert 0 < saved["cpu_fp32_chunked"] < saved["cpu_fp32"]  # no (L x L) scores kept for backward
    assert {row["table_optimizer"] for row in result["rows"] if row["level"] == "train"} == {"rowwise_adagrad"}
    assert set(result["speedup_over_cpu"]) == {"encoder hstu:8:1:6", "train hstu:8:1:6"}

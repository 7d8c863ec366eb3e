"""What every benchmark repeats: a private home and ports, phases with progress, the result
header (the command that produced it, commit, machine, date, seeds), the atomic JSON write and
the shutdown of what it started.

A benchmark runs as ``python -m benchmarks.<name>``; its result file names that command, so
every figure quoted from it can be measured again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from infra import cluster
from infra.processes import free_port
from infra.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

PHASES: list[dict[str, Any]] = []  # this process's phases, in the order they ran (one benchmark per process)


def log(message: str) -> None:
    """A progress line with the wall-clock time."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def loads() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (other work on it shows here)."""
    return [round(value, 2) for value in os.getloadavg()]


@contextmanager
def phase(name: str) -> Iterator[dict[str, Any]]:
    """Time a phase and record the load averages before and after it (in ``PHASES``)."""
    record: dict[str, Any] = {"phase": name, "load_before": loads()}
    started = time.perf_counter()
    log(f"{name} ...")
    try:
        yield record
    finally:
        record["seconds"] = round(time.perf_counter() - started, 1)
        record["load_after"] = loads()
        PHASES.append(record)
        log(f"{name}: {record['seconds']} s (load {record['load_before'][0]} -> {record['load_after'][0]})")


@contextmanager
def private_home(name: str) -> Iterator[Path]:
    """A temporary STREAMREC_HOME for one run, removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix=f"streamrec-bench-{name}-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def private_settings(home: Path, **env: str) -> Settings:
    """Settings of a private mini-cluster in ``home`` on free ports, as tests/conftest.py makes them.

    The STREAMREC_* variables are exported (``env`` adds or overrides some, e.g.
    ``STREAMREC_TOPIC``), since Spark, Ray workers and CLI subprocesses read them.
    """
    private = {
        "STREAMREC_HOME": str(home),
        "STREAMREC_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "STREAMREC_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "STREAMREC_RAY_ADDRESS": f"127.0.0.1:{free_port()}",
        "STREAMREC_RAY_DASHBOARD_PORT": str(free_port()),
        "STREAMREC_RAY_CLIENT_PORT": str(free_port()),
        "STREAMREC_SERVE_PORT": str(free_port()),
        "STREAMREC_DAGSTER_PORT": str(free_port()),
        "STREAMREC_EXTERNAL": "",
        "STREAMREC_LAKE_URI": "",
        "STREAMREC_TRAIN_STORAGE": "",
        "STREAMREC_RAY_AUTH": "token",
        "STREAMREC_RAY_AUTH_TOKEN_FILE": str(home / "ray" / "auth_token"),
        **env,
    }
    os.environ.pop("STREAMREC_CONFIG", None)
    os.environ.update(private)
    return get_settings()


def shutdown(settings: Settings) -> None:
    """Stop what a benchmark started: Serve and the Ray driver if connected, then the private cluster."""
    try:
        import ray
        from ray import serve

        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
    except Exception as error:  # the cluster goes down next anyway
        log(f"serve shutdown: {error}")
    cluster.down(settings)


def command() -> str:
    """The command line that started this process, as one would type it in the repository root."""
    return shlex.join(["python", *sys.orig_argv[1:]])


def commit() -> str:
    """The git commit of the checkout, with ``-dirty`` when tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine() -> dict[str, Any]:
    """Cores, memory, Python and platform of this machine."""
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def header(benchmark: str, args: argparse.Namespace, seeds: list[int]) -> dict[str, Any]:
    """The first fields of every result file: what ran, from which commit, where, when, with which seeds."""
    return {
        "benchmark": benchmark,
        "command": command(),
        "commit": commit(),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "arguments": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "seeds": seeds,
    }


def write_result(path: Path, result: dict[str, Any]) -> Path:
    """``result`` as indented JSON at ``path``, written to ``path``.tmp and renamed over it, so a
    killed run never leaves half a file where the last complete result was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(partial, path)
    return path


def with_preset(args: argparse.Namespace, quick: dict[str, Any], full: dict[str, Any]) -> argparse.Namespace:
    """``args`` with every option left unset (None) taken from the preset: ``quick`` under
    ``--quick``, else ``full``; options given on the command line win."""
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def run_in_private_home(
    name: str,
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace, Path], dict[str, Any]],
    summarise: Callable[[dict[str, Any]], None],
) -> None:
    """``run(args, home)`` in a private home removed afterwards, then ``summarise`` its result and
    print where it was written (``args.out``)."""
    with private_home(name) as home:
        result = run(args, home)
    summarise(result)
    print(args.out)

"""The benchmarks' harness without services: the result header, the atomic write, private
settings, the demo's stage timings, and that every benchmark starts as a module."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import harness
from benchmarks.demo.run import reported, stages
from benchmarks.suite.run import SUMMARY, counts

ROOT = Path(__file__).resolve().parents[2]
# `make bench` itself takes no options: run with --help, it would start every benchmark.
NOT_MODULES = {"benchmarks.run_all"}

# Each benchmark module's --help, in one interpreter (imports shared): "<module> <exit code>" and
# whether its usage names where the result goes.
HELP_ALL = """
import contextlib, io, runpy, sys
for module in sys.argv[1:]:
    out = io.StringIO()
    sys.argv = [module, "--help"]
    code = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = stop.code
    text = out.getvalue()
    print(module, code, text.startswith("usage:") and "--out" in text, flush=True)
"""


def benchmark_modules() -> list[str]:
    """Every module under benchmarks/ that runs with ``python -m``: packages with a __main__.py
    and modules with a ``__main__`` block (a package's own run.py runs through its __main__)."""
    found = [f"benchmarks.{main.parent.name}" for main in sorted((ROOT / "benchmarks").glob("*/__main__.py"))]
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        if (path.parent / "__main__.py").exists() and path.name in ("__main__.py", "run.py"):
            continue
        if '__name__ == "__main__"' in path.read_text():
            found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return [module for module in found if module not in NOT_MODULES]


@pytest.fixture
def environ() -> Iterator[None]:
    """The process environment as it was, after a test that exports STREAMREC_* variables."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_the_header_names_command_commit_machine_date_and_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        sys, "orig_argv", ["/somewhere/.venv/bin/python", "-m", "benchmarks.features", "--events", "1 000"]
    )
    args = argparse.Namespace(events=1000, out=Path("benchmarks/results/x.json"))
    head = harness.header("features", args, seeds=[0, 1])
    assert head["benchmark"] == "features"
    assert head["command"] == "python -m benchmarks.features --events '1 000'"
    assert len(head["commit"].removesuffix("-dirty")) == 40
    assert head["when"].endswith("+00:00")
    assert head["machine"]["cpus"] == os.cpu_count() and head["machine"]["memory_gib"] > 0
    assert head["arguments"] == {"events": 1000, "out": "benchmarks/results/x.json"}
    assert head["seeds"] == [0, 1]
    json.dumps(head)  # the header is plain JSON


def test_a_failed_write_leaves_the_last_result_whole(tmp_path: Path) -> None:
    path = tmp_path / "results" / "bench.json"
    assert harness.write_result(path, {"figure": 1.5}) == path
    assert json.loads(path.read_text()) == {"figure": 1.5}
    with pytest.raises(TypeError):
        harness.write_result(path, {"figure": object()})
    assert json.loads(path.read_text()) == {"figure": 1.5}
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]  # no .tmp left behind


def test_private_settings_use_the_home_given_and_free_ports(tmp_path: Path, environ: None) -> None:
    first = harness.private_settings(tmp_path, STREAMREC_TOPIC="bench-x")
    assert os.environ["STREAMREC_HOME"] == str(tmp_path)
    assert os.environ["STREAMREC_TOPIC"] == "bench-x"
    assert first.home == tmp_path
    ports = {os.environ[name] for name in ("STREAMREC_SERVE_PORT", "STREAMREC_RAY_DASHBOARD_PORT",
                                           "STREAMREC_RAY_CLIENT_PORT", "STREAMREC_DAGSTER_PORT")}  # fmt: skip
    assert len(ports) == 4


def test_a_preset_fills_only_the_options_left_unset() -> None:
    quick, full = {"users": 10, "epochs": 1}, {"users": 1_000, "epochs": 20}
    given = harness.with_preset(argparse.Namespace(quick=True, users=None, epochs=3), quick, full)
    assert (given.users, given.epochs) == (10, 3)
    default = harness.with_preset(argparse.Namespace(quick=False, users=None, epochs=None), quick, full)
    assert (default.users, default.epochs) == (1_000, 20)


def test_a_run_in_a_private_home_summarises_and_removes_the_home(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    homes: list[Path] = []
    summaries: list[dict[str, object]] = []

    def run(args: argparse.Namespace, home: Path) -> dict[str, object]:
        homes.append(home)
        assert home.is_dir() and "streamrec-bench-probe-" in home.name
        return {"home": str(home)}

    harness.run_in_private_home("probe", argparse.Namespace(out=tmp_path / "probe.json"), run, summaries.append)
    assert summaries == [{"home": str(homes[0])}] and not homes[0].exists()
    assert capsys.readouterr().out.strip().endswith("probe.json")


def test_phases_are_timed_and_recorded() -> None:
    before = len(harness.PHASES)
    with harness.phase("nothing") as record:
        record["note"] = "kept"
    assert harness.PHASES[before]["phase"] == "nothing" and harness.PHASES[before]["note"] == "kept"
    assert harness.PHASES[before]["seconds"] >= 0 and len(harness.PHASES[before]["load_after"]) == 3
    del harness.PHASES[before:]


def test_demo_stages_run_from_one_rule_to_the_next() -> None:
    rule = "─" * 20
    lines = [
        (0.0, f"{rule} 1. local mini-cluster {rule}"),
        (3.0, "kafka   local ..."),
        (12.5, f"{rule} 2. produce 200,000 synthetic events {rule}"),
        (40.0, "ranking stage: 71s"),
        (40.5, "failed requests during the round: 0 of 527"),
        (41.0, "demo finished in 264s; the cluster keeps running (`streamrec down`)"),
    ]
    assert stages(lines, ended=42.0) == [
        {"stage": 1, "title": "local mini-cluster", "seconds": 12.5},
        {"stage": 2, "title": "produce 200,000 synthetic events", "seconds": 29.5},
    ]
    assert reported(lines) == {
        "round": ["failed requests during the round: 0 of 527"],
        "ranking_stage_s": 71,
        "demo_reported_s": 264,
    }


def test_every_benchmark_runs_as_a_module() -> None:
    modules = benchmark_modules()
    assert {"benchmarks.train", "benchmarks.streaming.freshness"} <= set(modules)  # the discovery finds both kinds
    done = subprocess.run(
        [sys.executable, "-c", HELP_ALL, *modules], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    # Each starts, prints its usage and says where its result goes.
    assert answers == dict.fromkeys(modules, "0 True"), answers


def test_the_suite_benchmark_reads_pytests_closing_line() -> None:
    line = "=== 254 passed, 83 deselected, 2 warnings in 231.40s (0:03:51) ==="
    match = SUMMARY.match(line)
    assert match is not None
    assert counts(match.group(1)) == {"passed": 254, "deselected": 83}
    assert counts("1 failed, 300 passed, 1 error") == {"failed": 1, "passed": 300, "errors": 1}


def test_the_ingest_benchmark_refuses_events_that_fit_in_one_micro_batch() -> None:
    """It used to start the broker, ingest them all in one batch and crash printing a rate of None."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.ingest", "--events", "1000", "--max-records-per-trigger", "5000"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "fit in one micro-batch of 5,000 records" in result.stderr

"""Suite benchmark: the wall time of `make test-fast` and of `make test`, and what pytest counted.

Runs each target as a subprocess in the repository root (the environment's PYTEST_ADDOPTS and
PYTEST_ARGS removed, as .ci/run does), timestamps its output, and records the wall seconds,
the exit code, pytest's closing line (passed, failed, skipped, deselected) and the seconds of
lint and types before pytest started. The machine should be otherwise quiet: the load
averages before and after are recorded beside the figures.

    .venv/bin/python -m benchmarks.suite [--targets test-fast test] [--out PATH]

Writes benchmarks/results/suite.json (``--out``) and prints its path.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS, ROOT, header, loads, log, write_result

RESULT = RESULTS / "suite.json"
SUMMARY = re.compile(r"^=+ (.*\b(passed|failed|error)\b.*) in [\d.]+s")  # pytest's closing line
COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")
PYTEST_START = re.compile(r"^=+ test session starts =+$")
TAIL_LINES = 40


def counts(summary: str) -> dict[str, int]:
    """pytest's closing line as numbers: ``"254 passed, 83 deselected"`` -> {"passed": 254, "deselected": 83}."""
    return {("errors" if kind == "error" else kind): int(n) for n, kind in COUNT.findall(summary)}


def time_target(target: str) -> dict[str, Any]:
    """Run `make <target>` and return its wall time, exit code and pytest's counts."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTEST_ADDOPTS", "PYTEST_ARGS")}
    load_before = loads()
    started = time.perf_counter()
    pytest_started: float | None = None
    summary = ""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(
        ["make", target], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for raw in process.stdout:
            print(raw, end="", flush=True)  # progress: the target's own output, as a developer sees it
            line = raw.rstrip()
            tail.append(line)
            if pytest_started is None and PYTEST_START.match(line):
                pytest_started = time.perf_counter()
            if match := SUMMARY.match(line):
                summary = match.group(1)
        code = process.wait()
    wall = time.perf_counter() - started
    return {
        "target": f"make {target}",
        "exit_code": code,
        "wall_s": round(wall, 1),
        "before_pytest_s": round(pytest_started - started, 1) if pytest_started else None,
        "pytest_summary": summary,
        "counts": counts(summary),
        "output_tail": list(tail) if code else [],  # why a failed run failed
        "load_before": load_before,
        "load_after": loads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", default=["test-fast", "test"], choices=["test-fast", "test"])
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    result = header("suite", args, seeds=[])
    runs = []
    for target in args.targets:
        log(f"make {target} ...")
        runs.append(time_target(target))
        log(f"make {target}: {runs[-1]['wall_s']} s, exit {runs[-1]['exit_code']}, {runs[-1]['pytest_summary']}")
    result["runs"] = runs
    print(write_result(args.out, result))

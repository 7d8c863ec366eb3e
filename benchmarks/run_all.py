"""`make bench`: run every benchmark (``python -m benchmarks.<name>``) one after another.

Each benchmark measures its baseline side by side in the same run and writes
benchmarks/results/<name>.json, headed by the command that produced it; this runner prints
where each result landed.
"""

from __future__ import annotations

import subprocess
import sys
import time

from benchmarks.harness import RESULTS, ROOT

BENCHMARKS = ("demo", "features", "ingest", "rank", "serve", "train")


def main() -> int:
    """Run each benchmark in its own process; returns the number of failures."""
    failures = 0
    for name in BENCHMARKS:
        print(f"=== benchmark {name}", flush=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], cwd=ROOT)
        seconds = time.monotonic() - started
        status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
        print(f"=== {name}: {status} in {seconds:.0f}s -> {RESULTS / (name + '.json')}", flush=True)
        failures += result.returncode != 0
    return failures


if __name__ == "__main__":
    sys.exit(main())

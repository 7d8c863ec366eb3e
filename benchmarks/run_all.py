"""`make bench`: run every benchmark (benchmarks/<area>/run.py) one after another.

Each benchmark measures its baseline side by side in the same run and writes
benchmarks/results/<area>.json; this runner prints where each result landed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent


def main() -> int:
    """Run each area's benchmark in its own process; returns the number of failures."""
    failures = 0
    for script in sorted(BENCHMARKS.glob("*/run.py")):
        area = script.parent.name
        print(f"=== benchmark {area}", flush=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(script)], cwd=BENCHMARKS.parent)
        seconds = time.monotonic() - started
        status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
        print(f"=== {area}: {status} in {seconds:.0f}s -> {BENCHMARKS / 'results' / (area + '.json')}", flush=True)
        failures += result.returncode != 0
    return failures


if __name__ == "__main__":
    sys.exit(main())

"""Demo benchmark: the wall time of `streamrec demo` and of each of its stages, from a fresh home.

Runs ``streamrec demo`` (what ``make demo`` runs) as a subprocess on a private mini-cluster
(temporary STREAMREC_HOME, free ports, so nothing of a developer's own cluster is reused),
timestamps every line it prints, and records per stage (the numbered rules the demo prints)
the seconds until the next stage began, beside the demo's own "ranking stage" and "demo
finished in" figures and its lines about the promotion gate's round (the gate's decision,
failed requests, versions served). The private cluster is stopped afterwards.

    .venv/bin/python -m benchmarks.demo [--seed 0] [--out PATH] [-- streamrec demo options, e.g. --events 50000]

Writes benchmarks/results/demo.json (``--out``) and prints its path.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS, header, loads, log, private_home, private_settings, shutdown, write_result

RESULT = RESULTS / "demo.json"
STAGE = re.compile(r"^[─-]+ (\d+)\. (.+?) [─-]+$")  # rich's console.rule(f"{number}. {title}") without a terminal
REPORTED = {  # figures the demo prints about itself
    "ranking_stage_s": re.compile(r"^ranking stage: (\d+)s$"),
    "demo_reported_s": re.compile(r"^demo finished in (\d+)s"),
}
QUOTED = ("gate: ", "failed requests during the round: ", "versions a client was served: ")  # kept verbatim


def stages(lines: list[tuple[float, str]], ended: float) -> list[dict[str, Any]]:
    """Each numbered stage with the seconds from its rule to the next one's (or the end)."""
    starts = [(at, match) for at, line in lines if (match := STAGE.match(line.strip()))]
    bounds = [at for at, _ in starts[1:]] + [ended]
    return [
        {"stage": int(match.group(1)), "title": match.group(2), "seconds": round(end - at, 1)}
        for (at, match), end in zip(starts, bounds, strict=True)
    ]


def reported(lines: list[tuple[float, str]]) -> dict[str, Any]:
    """The timings the demo printed itself, and its lines about the promotion gate's round."""
    found: dict[str, Any] = {"round": [line.strip() for _, line in lines if line.strip().startswith(QUOTED)]}
    for _, line in lines:
        for key, pattern in REPORTED.items():
            if match := pattern.match(line.strip()):
                found[key] = int(match.group(1))
    return found


def run_demo(demo_args: list[str]) -> tuple[list[tuple[float, str]], float, int]:
    """`streamrec demo` with the exported private settings: its timestamped lines, wall seconds, exit code."""
    streamrec = Path(sys.executable).parent / "streamrec"
    env = {**os.environ, "COLUMNS": "200"}  # wide enough that rich never wraps a stage's rule
    started = time.perf_counter()
    lines = []
    with subprocess.Popen(
        [str(streamrec), "demo", *demo_args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append((time.perf_counter() - started, line.rstrip("\n")))
    return lines, time.perf_counter() - started, process.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="seed of the demo's events and training")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("demo_args", nargs=argparse.REMAINDER, help="options of `streamrec demo`, after --")
    args = parser.parse_args()
    demo_args = [arg for arg in args.demo_args if arg != "--"] + ["--seed", str(args.seed)]
    result: dict[str, Any] = header("demo", args, seeds=[args.seed])
    load_start = loads()
    with private_home("demo") as home:
        settings = private_settings(home)
        try:
            log(f"streamrec demo {' '.join(demo_args)}")
            lines, seconds, code = run_demo(demo_args)
        finally:
            shutdown(settings)  # the demo leaves its cluster running on purpose
    result["machine"]["load_average_1_5_15_min"] = {"start": load_start, "end": loads()}
    result.update(
        exit_code=code,
        seconds=round(seconds, 1),
        **reported(lines),
        stages=stages(lines, seconds),
    )
    write_result(args.out, result)
    print(args.out)
    if code != 0:
        sys.exit(f"streamrec demo exited with {code}")


if __name__ == "__main__":
    main()

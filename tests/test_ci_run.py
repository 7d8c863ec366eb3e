"""CI's entry point runs the whole suite whatever its environment says."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Stands in for make: prints what the real one would act on (no lint, no tests run).
FAKE_MAKE = """#!/bin/sh
echo "args=$*"
echo "PYTEST_ADDOPTS=${PYTEST_ADDOPTS-unset}"
echo "PYTEST_ARGS=${PYTEST_ARGS-unset}"
echo "MAKEFLAGS=${MAKEFLAGS-unset}"
"""


def test_ci_ignores_pytest_and_make_options_from_its_environment(tmp_path: Path) -> None:
    (tmp_path / "make").write_text(FAKE_MAKE)
    (tmp_path / "make").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
        "PYTEST_ADDOPTS": "-k nothing",
        "PYTEST_ARGS": "-k nothing",
        "MAKEFLAGS": "PYTEST_ARGS=-k-nothing",
    }
    done = subprocess.run([str(ROOT / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "args=test",
        "PYTEST_ADDOPTS=unset",
        "PYTEST_ARGS=unset",
        "MAKEFLAGS=unset",
    ]

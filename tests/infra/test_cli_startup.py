"""Every `streamrec` command starts without the heavy libraries: the CLI's plugins register
their commands and option defaults without importing torch, TorchRec, Ray, Spark, Dagster or
MLflow (each command imports what it needs when it runs). `streamrec --help` once cost 8.7 s of
CPU because workflows.cli imported the demo (torch, Ray Train) for its option defaults."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "torchrec", "ray", "pyspark", "dagster", "mlflow")


def test_the_cli_registers_every_command_without_the_heavy_libraries() -> None:
    code = (
        "import sys, infra.cli; infra.cli._register_plugins(); "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules)); "
        "app = infra.cli.app; "
        "print(sorted([c.name for c in app.registered_commands if c.name] + [g.name for g in app.registered_groups]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    heavy, commands = result.stdout.strip().splitlines()[-2:]
    assert heavy == "[]"
    assert all(name in commands for name in ("'demo'", "'train'", "'train-ranking'", "'evaluate'", "'features'"))

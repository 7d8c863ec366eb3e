"""The ingest stream's error, and Spark's long failures cut to what a person needs."""

from __future__ import annotations

import re

from infra.errors import StreamrecError


class IngestError(StreamrecError):
    """The ingest stream cannot start or failed."""


def error_digest(message: str) -> str:
    """The first line of a Spark error and the last Python exception line inside it."""
    lines = message.strip().splitlines()
    python_errors = [line.strip() for line in lines if re.match(r"^\s*\w+(\.\w+)*(Error|Exception): ", line)]
    return " | ".join(dict.fromkeys(lines[:1] + python_errors[-1:]))

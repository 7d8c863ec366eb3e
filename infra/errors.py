"""The base of every error streamrec reports to a person: the message says what and why."""

from __future__ import annotations


class StreamrecError(RuntimeError):
    """An expected failure whose message is meant for the user (the CLI prints it, no traceback)."""

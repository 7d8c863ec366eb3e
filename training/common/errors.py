"""The error of a training run that could not start or finish."""

from __future__ import annotations

from infra.errors import StreamrecError


class TrainingError(StreamrecError):
    """A run could not start or did not finish; the message says why and what to do."""

    def __init__(self, message: str, run_name: str | None = None) -> None:
        super().__init__(message)
        self.run_name = run_name  # set when the run exists and can be resumed

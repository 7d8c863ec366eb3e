"""The serving layer's error for a person: serving cannot start, or does not answer."""

from __future__ import annotations

from infra.errors import StreamrecError


class ServeError(StreamrecError):
    """Serving cannot start, or does not answer."""

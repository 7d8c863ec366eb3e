"""Feed the synthetic stream into the lake a span of days at a time: produce the days' events to
Kafka, then ingest until idle. The demo sends its live days this way and benchmarks/continual
replays a whole drifting stream day by day.

A failed ingest is retried from its stream checkpoint: the stream writes exactly once, so a
retry lands only what the failed attempt did not (on a busy machine Spark can lose a Python
worker, "Python worker failed to connect back", and the next attempt goes through).
"""

from __future__ import annotations

from collections.abc import Callable

from infra.settings import Settings
from ingestion.errors import IngestError
from ingestion.producer import encode_event, produce
from ingestion.stream import run_ingest
from ingestion.synthetic import SyntheticConfig, events_between_days

INGEST_ATTEMPTS = 3


def ingest_until_idle(
    settings: Settings, *, attempts: int = INGEST_ATTEMPTS, log: Callable[[str], None] = print
) -> None:
    """Ingest everything on the topic into bronze and silver, retrying a failed stream from its
    checkpoint up to ``attempts`` times in all (``log`` says when it retries)."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            run_ingest(settings, until_idle=True, report=lambda line: None)
            return
        except IngestError as error:
            if attempt == attempts:
                raise
            log(f"ingest failed ({error}); again from its checkpoint (attempt {attempt + 1} of {attempts})")


def produce_days(
    settings: Settings,
    stream: SyntheticConfig,
    after_day: float | None,
    until_day: float,
    *,
    description: str = "producing",
    show_progress: bool = True,
) -> int:
    """Produce ``stream``'s events after day ``after_day`` (None: from its start) up to day
    ``until_day`` to Kafka; the number sent. Raises when any event fails to reach Kafka."""
    events = (encode_event(event) for event in events_between_days(stream, after_day, until_day))
    days = until_day - (after_day or 0.0)
    expected = round(stream.events * days / stream.span_days)
    sent = produce(events, settings, total=expected, description=description, show_progress=show_progress)
    if sent.failed:
        raise IngestError(f"{sent.failed} of {sent.sent + sent.failed} events failed to reach Kafka")
    return sent.sent


def send_days(
    settings: Settings,
    stream: SyntheticConfig,
    after_day: float | None,
    until_day: float,
    *,
    description: str = "producing",
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> int:
    """``produce_days``, then ingest until idle; the number sent."""
    sent = produce_days(settings, stream, after_day, until_day, description=description, show_progress=show_progress)
    ingest_until_idle(settings, log=log)
    return sent

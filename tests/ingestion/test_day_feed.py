"""The day feed's rules without services: which events a span of days sends, and the ingest retries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra.settings import Settings, get_settings
from ingestion import day_feed
from ingestion.errors import IngestError
from ingestion.producer import ProduceSummary
from ingestion.synthetic import SyntheticConfig


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return get_settings(home=tmp_path)


def _stream() -> SyntheticConfig:
    return SyntheticConfig(users=20, items=50, events=600, span_days=3.0, seed=1, start_ms=1_700_000_000_000)


def test_a_failed_ingest_is_retried_from_its_checkpoint_until_the_attempts_run_out(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    calls: list[int] = []

    def flaky(settings: Settings, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise IngestError("the ingest stream failed: Python worker failed to connect back")

    monkeypatch.setattr(day_feed, "run_ingest", flaky)
    said: list[str] = []
    day_feed.ingest_until_idle(settings, attempts=3, log=said.append)
    assert len(calls) == 3 and len(said) == 2 and "attempt 3 of 3" in said[-1]

    calls.clear()
    with pytest.raises(IngestError, match="connect back"):
        day_feed.ingest_until_idle(settings, attempts=2, log=said.append)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="at least 1"):
        day_feed.ingest_until_idle(settings, attempts=0)


def test_send_days_sends_exactly_the_span_and_refuses_lost_events(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    stream = _stream()
    sent: list[list[bytes]] = []
    lost = {"failed": 0}

    def produce(records: Any, settings: Settings, **kwargs: Any) -> ProduceSummary:
        batch = [record.value for record in records]
        sent.append(batch)
        return ProduceSummary(topic="t", sent=len(batch) - lost["failed"], failed=lost["failed"])

    monkeypatch.setattr(day_feed, "produce", produce)
    monkeypatch.setattr(day_feed, "ingest_until_idle", lambda settings, **kwargs: None)
    first = day_feed.send_days(settings, stream, None, 1, show_progress=False)
    rest = day_feed.send_days(settings, stream, 1, 4, show_progress=False)  # a few events fall just past day 3
    assert first + rest == stream.events and first == len(sent[0]) and rest == len(sent[1])
    assert 0.2 * stream.events < first < 0.5 * stream.events  # about a third of the events per day

    lost["failed"] = 1
    with pytest.raises(IngestError, match="1 of"):
        day_feed.send_days(settings, stream, 2, 3, show_progress=False)

"""Fault: the broker restarted under a continuous ingest stream (issue 30, item 3).

A private local broker (Tansu, memory storage) on a port of its own is killed under a running
`streamrec ingest` and started again: the stream must report the loss, reconnect with backoff,
and, since a memory broker comes back with the topic empty, stop naming its checkpoint rather
than read on from offsets the new topic gives to other records. Bronze keeps every record once.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

from ingestdata import coordinates, encode_event, events, send, table

from infra import cluster
from infra.components import KafkaBroker
from infra.polling import wait_until
from infra.processes import free_port
from infra.settings import Settings, get_settings
from ingestion.checkpoints import checkpoint_path
from ingestion.errors import IngestError
from ingestion.schema import BRONZE_TABLE, SILVER_TABLE
from ingestion.stream import run_ingest


def test_a_continuous_stream_reconnects_after_the_broker_restarts_and_stops_at_the_recreated_topic(
    spark: object, kafka_broker: Settings, tmp_path: Path
) -> None:
    settings = get_settings(
        home=tmp_path / "home",
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        topic=f"t-{uuid.uuid4().hex[:10]}",
        topic_partitions=1,
        lake_uri=str(tmp_path / "lake"),
        ingest_trigger_interval_s=0.5,
    )
    broker = KafkaBroker(settings)
    lines: list[str] = []
    outcome: dict[str, object] = {}

    def ingest() -> None:
        try:
            outcome["stats"] = run_ingest(settings, duration_s=180, report=lambda line: lines.append(str(line)))
        except IngestError as error:
            outcome["error"] = error

    cluster.start(broker)  # creates the topic
    thread = threading.Thread(target=ingest)
    try:
        first = send(settings, [encode_event(event) for event in events(30)])
        thread.start()
        bronze, silver = settings.table_uri(BRONZE_TABLE), settings.table_uri(SILVER_TABLE)
        wait_until(lambda: table(bronze).num_rows == 30, 120, what="the first records in bronze")
        cluster.down(settings, ["kafka"])
        wait_until(lambda: any(" does not answer " in line for line in lines), 60, what="a retry of the lost broker")
        cluster.start(broker)  # memory storage: the topic is back, empty
        thread.join(120)
    finally:
        cluster.down(settings, ["kafka"])
    assert not thread.is_alive() and "error" in outcome, (outcome, lines)
    message = str(outcome["error"])
    assert "ends at offset 0, before the stream's offset 30" in message and str(checkpoint_path(settings)) in message
    lost = next(index for index, line in enumerate(lines) if line.startswith("lost Kafka at "))
    assert "reconnecting in 1 s" in lines[lost]
    retried = [line for line in lines[lost:] if " does not answer " in line]
    assert retried[0].endswith("next try in 2 s"), retried  # the wait doubles
    assert any(line.startswith("reconnected to Kafka at ") for line in lines[lost:]), lines
    assert coordinates(table(bronze)) == [(0, sent.offset) for sent in first]  # nothing lost, nothing twice
    assert table(silver).num_rows == 30

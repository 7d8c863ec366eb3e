"""The tail thread of an online history: one daemon thread owns a Kafka consumer, assigned the
owned partitions at the history's next offsets, polls and hands the records to the store.

It never dies silently: errors are logged, kept in the store's ``status()["last_error"]`` and
retried with backoff. A partition that ends before the history's next offset (a recreated
topic), owned partitions added to the topic (found within a few seconds) or offsets out of
range make it set itself up again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from infra.errors import StreamrecError
from ingestion.kafka_client import high_watermarks, kafka_consumer

if TYPE_CHECKING:
    from kafka import KafkaConsumer

    from serving.history.store import OnlineHistory

_log = logging.getLogger(__name__)

_POLL_TIMEOUT_MS = 100  # freshness: a record waits at most about this long in an idle poll
_FETCH_MAX_WAIT_MS = 100  # how long the broker may hold a fetch that has nothing new
_MAX_POLL_RECORDS = 20_000
_METADATA_EVERY_S = 5.0  # how often the tail looks for added partitions or a vanished topic
_REQUEST_TIMEOUT_MS = 15_000
_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 30.0


class HistoryError(StreamrecError):
    """The online history cannot follow its topic as it is (it keeps retrying)."""


class _Resync(Exception):
    """The tail must set itself up again (partitions changed, topic recreated); not an error."""


class HistoryTail:
    """The thread that tails the owned partitions of ``history``'s topic into it."""

    def __init__(self, history: OnlineHistory) -> None:
        self.history = history
        self.topic = history.topic
        self._assigned: list[int] = []
        self._backoff_s = _BACKOFF_FIRST_S
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"online-history-{self.topic}", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Stop polling and wait up to ``timeout_s`` for the thread to close the consumer."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            _log.warning("the online history tail of %s did not stop within %.0fs", self.topic, timeout_s)

    def _run(self) -> None:
        """(Re)connect, tail until stopped; errors are kept and retried."""
        while not self._stop.is_set():
            consumer = None
            try:
                consumer = self._connect()
                self._tail(consumer)
            except _Resync as why:
                _log.info("online history of %s: setting up the tail again (%s)", self.topic, why)
                self._stop.wait(0.05)
            except Exception as error:
                message = f"{type(error).__name__}: {error}"
                self.history.record_error(message)
                # Expected trouble (no broker, no topic) in one line; anything else with its traceback.
                _log.error(
                    "online history of %s: the tail failed (%s); retrying in %.1fs",
                    self.topic,
                    message,
                    self._backoff_s,
                    exc_info=not _expected(error),
                )
                self._stop.wait(self._backoff_s)
                self._backoff_s = min(self._backoff_s * 2, _BACKOFF_MAX_S)
            finally:
                self.history.set_tailing(False)
                if consumer is not None:
                    try:
                        consumer.close()
                    except Exception:  # closing a broken consumer must not stop the retry loop
                        _log.debug("closing the consumer failed", exc_info=True)

    def _connect(self) -> KafkaConsumer:
        """A consumer assigned the owned partitions and positioned at their next offsets."""
        from kafka import TopicPartition

        consumer = kafka_consumer(
            self.history.settings.kafka.bootstrap,
            client_id="streamrec-online-history",
            fetch_max_wait_ms=_FETCH_MAX_WAIT_MS,
            request_timeout_ms=_REQUEST_TIMEOUT_MS,
        )
        try:
            ends = {int(p): end for p, end in high_watermarks(consumer, self.topic).items()}
            owned = sorted(p for p in ends if self.history.owns(p))
            tps = [TopicPartition(self.topic, p) for p in owned]
            beginnings = {tp.partition: offset for tp, offset in consumer.beginning_offsets(tps).items()} if tps else {}
            positions = self.history.reposition({p: ends[p] for p in owned}, beginnings)
            self._assigned = owned
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, positions[tp.partition])
        except BaseException:
            consumer.close()
            raise
        _log.info("online history of %s: tailing partitions %s from %s", self.topic, owned, positions)
        return consumer

    def _tail(self, consumer: KafkaConsumer) -> None:
        """Poll and apply until stopped; raises _Resync when the assignment must change."""
        from kafka import TopicPartition
        from kafka.errors import OffsetOutOfRangeError

        tps = [TopicPartition(self.topic, p) for p in self._assigned]
        checked = time.monotonic()
        while not self._stop.is_set():
            try:
                polled = consumer.poll(timeout_ms=_POLL_TIMEOUT_MS, max_records=_MAX_POLL_RECORDS)
            except OffsetOutOfRangeError as error:
                raise _Resync(f"offsets out of range: {error}") from error
            for tp, records in polled.items():
                if records:
                    self.history.apply(tp.partition, records)
            recreated = self.history.observe_highs({tp.partition: consumer.highwater(tp) for tp in tps})
            self._backoff_s = _BACKOFF_FIRST_S
            if recreated:
                raise _Resync(f"partitions {recreated} end before the history's offsets")
            if time.monotonic() - checked > _METADATA_EVERY_S:
                checked = time.monotonic()
                consumer.topics()  # a metadata request: finds added partitions
                partitions = consumer.partitions_for_topic(self.topic)
                if not partitions:
                    raise HistoryError(f"topic {self.topic} does not exist (any more)")
                owned = sorted(p for p in partitions if self.history.owns(p))
                if owned != self._assigned:
                    raise _Resync(f"owned partitions are now {owned}, were {self._assigned}")


def _expected(error: BaseException) -> bool:
    """Whether ``error`` is operational trouble worth one line (no traceback)."""
    from kafka.errors import KafkaError

    return isinstance(error, StreamrecError | KafkaError)

"""Background delivery of events: the caller's thread only appends to a bounded queue.

A daemon thread turns queued items into events, encodes them (Avro through the
registry) and hands them to an idempotent confluent-kafka producer, whose
delivery reports are counted. Nothing is dropped silently: when the bounded
queue is full (Kafka unreachable for long), the item is refused, ``dropped``
grows and a warning is logged; ``health()`` says ``degraded`` while events wait
or failed. ``flush()`` waits until everything queued is delivered.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from infra import registry as registry_mod
from infra.kafka import TrackedProducer, producer
from infra.serde import TopicSerde
from infra.settings import KafkaSettings, RegistrySettings
from schemas.events import Event
from schemas.topics import TopicSpec

log = logging.getLogger(__name__)


class SenderClosed(RuntimeError):
    """Events were logged after close()."""


@dataclass
class SenderStats:
    queued: int = 0
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    encode_errors: int = 0
    last_error: str | None = None


Build = Callable[[], list[tuple[TopicSpec, Event | dict[str, Any]]]]


class EventSender:
    def __init__(
        self,
        kafka: KafkaSettings,
        registry: RegistrySettings,
        topics: list[TopicSpec],
        *,
        buffer: int = 100_000,
        topic_suffix: str = "",
    ) -> None:
        reg = registry_mod.client(registry)
        self._serde = {t.name: TopicSerde(reg, replace(t, name=t.name + topic_suffix)) for t in topics}
        self._names = {t.name: t.name + topic_suffix for t in topics}
        for serde in self._serde.values():
            # Resolve the writer schema ids now: a registry that is down at startup is a clear error
            # here (RegistryUnavailable / SchemaNotRegistered), and later encodes need no registry.
            serde.schema_id  # noqa: B018
        self._queue: collections.deque[Build] = collections.deque()
        self._buffer = buffer
        self._cv = threading.Condition()
        self._closed = False
        self.stats = SenderStats()
        # Survive a broker restart: retry deliveries for up to 10 minutes before calling one failed.
        self._producer: TrackedProducer = producer(
            kafka, **{"delivery.timeout.ms": 600_000, "queue.buffering.max.messages": buffer}
        )
        self._thread = threading.Thread(target=self._run, name="rftloop-event-sender", daemon=True)
        self._thread.start()

    def submit(self, build: Build) -> bool:
        """Queue ``build`` (called on the sender thread); False (and counted) when the buffer is full."""
        if self._closed:
            raise SenderClosed("this logger is closed; create a new one")
        if len(self._queue) + self.pending_in_kafka() >= self._buffer:
            self.stats.dropped += 1
            if self.stats.dropped in (1, 10, 100) or self.stats.dropped % 1000 == 0:
                log.warning(
                    "event buffer full (%d): %d event(s) dropped so far", self._buffer, self.stats.dropped
                )
            return False
        self._queue.append(build)
        self.stats.queued += 1
        if len(self._queue) == 1:
            with self._cv:
                self._cv.notify()
        return True

    def pending_in_kafka(self) -> int:
        return len(self._producer)

    def _run(self) -> None:
        while True:
            if not self._queue:
                with self._cv:
                    if not self._queue:
                        if self._closed:
                            return
                        self._cv.wait(0.05)
                self._producer.poll(0)
                continue
            build = self._queue.popleft()
            try:
                events = build()
                for topic, event in events:
                    time.sleep(0)  # yield the GIL between steps (see below)
                    if isinstance(event, dict):  # a ready Avro record
                        data = self._serde[topic.name].encode(event)
                        key = str(event[topic.key])
                    else:
                        data = self._serde[topic.name].encode_event(event)
                        key = topic.key_of(event)
                    self._producer.produce(self._names[topic.name], data, key)
                    self.stats.sent += 1
            except Exception as exc:  # one bad event must not stop the thread
                self.stats.encode_errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.error("event not sent: %s", self.stats.last_error)
            self.stats.failed = self._producer.failed
            self.stats.delivered = self._producer.delivered
            # Hand the GIL back after each event: an application thread calling log() then waits for
            # at most one event's encoding, not for the interpreter's 5 ms switch interval.
            time.sleep(0)

    def flush(self, timeout_s: float = 30) -> bool:
        """Wait until every queued event is delivered (True) or ``timeout_s`` passes (False)."""
        deadline = time.monotonic() + timeout_s
        while self._queue and time.monotonic() < deadline:
            time.sleep(0.005)
        left = self._producer.flush(max(0.0, deadline - time.monotonic()))
        self.stats.failed = self._producer.failed
        self.stats.delivered = self._producer.delivered
        return not self._queue and left == 0

    def health(self) -> dict[str, Any]:
        waiting = len(self._queue) + self.pending_in_kafka()
        stalled = self._producer.stalled()
        degraded = bool(
            self.stats.dropped or self._producer.failed or stalled or waiting > self._buffer // 10
        )
        return {
            "status": "degraded" if degraded else "ok",
            "waiting": waiting,
            "buffer": self._buffer,
            "delivered": self._producer.delivered,
            "failed": self._producer.failed,
            "dropped": self.stats.dropped,
            "kafka": f"unreachable: {self._producer.broker_error}" if stalled else "ok",
            "last_error": str(self._producer.last_error or self.stats.last_error or "") or None,
        }

    def close(self, timeout_s: float = 30) -> bool:
        ok = self.flush(timeout_s)
        self._closed = True
        with self._cv:
            self._cv.notify()
        self._thread.join(5)
        return ok

"""Background delivery of events: the caller's thread only appends to a bounded queue.

A daemon thread turns queued items into events, encodes them (Avro through the
registry) and hands them to an idempotent confluent-kafka producer, whose
delivery reports are counted. Nothing is dropped silently: when the bounded
queue is full (Kafka unreachable for long), the item is refused, ``dropped``
grows and a warning is logged; ``health()`` says ``degraded`` while events wait
or failed. ``flush()`` waits until everything queued is delivered.

What a ``log()`` call waits for (measured in bursts of 1,000 calls, the benchmark's pace) is the
GIL, held by another thread of this process:

- the sender thread. With it kept idle for a whole run, the calls' p99 was 21 µs; encoding side by
  side with the calls, 75-80 µs. Releasing the GIL between events does not hand it over reliably
  (the sender usually takes it back before the woken thread runs), and every wake of the sender
  while the application calls costs that call a GIL round trip. So while ``log()`` was called in
  the last ``QUIET_S`` the sender sleeps ``DEFER_SLEEP_S`` at a time and encodes once the calls
  pause. The wait is bounded: once the oldest queued call is ``MAX_DEFER_S`` old (calls that never
  pause) or the queue holds a tenth of the buffer, it encodes regardless. That only works if the
  sender keeps up in the pauses: it released the GIL with ``time.sleep(0)``, which is a timer here
  (73 µs a call, three per logged call: ~3k calls/s); it now uses ``os.sched_yield`` (0.5 µs) and
  builds the records as dicts (``Event.avro_record``), ~52 µs a call, ~19k calls/s;
- the cyclic garbage collector, which runs in whichever thread's allocation crosses its threshold
  (700 net new container objects). A queued call is *one* tuple, ``(queued at, build, *args)``: a
  closure was four tracked objects, and a burst's queue crossed the threshold every ~140 calls.

Together: p99 13-16 µs in the benchmark (was 73-88 µs). That needs the sender to keep up with the
calls in their pauses. On a slower machine (2026-12-07) it delivered 9-15k calls/s with the
application idle, where the benchmark's bursts need 20k/s (1,000 calls in each 50 ms pause). Its
Python work took ~81 µs of CPU a call, with the broker and librdkafka on the same 2 cores. So a
burst's last calls waited past ``MAX_DEFER_S``, the sender encoded side by side with the calls, and
the p99 was 0.24-1.2 ms (the benchmark's ``sender_calls_per_s`` reports the rate beside the need).
So the SDK's loggers do this thread's work in a child process by default (``sender_process.py``),
where it cannot hold the application's GIL; this thread is ``process=False`` (the gateway's sender).
"""

from __future__ import annotations

import collections
import logging
import os
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


Events = list[tuple[TopicSpec, Event | dict[str, Any]]]
Build = Callable[..., Events]
QUIET_S = 0.0003  # no log() call for this long: the application is between calls
DEFER_SLEEP_S = 0.002  # how long the sender sleeps while the application calls (each wake costs a call)
MAX_DEFER_S = 0.1  # the oldest queued call waits no longer than this for a pause


def count_dropped(stats: SenderStats, buffer: int) -> None:
    """A call refused because the buffer is full: counted, and logged at 1, 10, 100, then every 1000."""
    stats.dropped += 1
    if stats.dropped in (1, 10, 100) or stats.dropped % 1000 == 0:
        log.warning("event buffer full (%d): %d event(s) dropped so far", buffer, stats.dropped)


def application_calling(now: float, last_submit: float, oldest: float, queued: int, buffer: int) -> bool:
    """The application called in the last ``QUIET_S``, the oldest queued call may still wait, and
    the queue is under a tenth of the buffer: the sender waits for a pause instead of working."""
    return now - last_submit < QUIET_S and now - oldest < MAX_DEFER_S and queued < buffer // 10


def sender_producer(kafka: KafkaSettings, buffer: int) -> TrackedProducer:
    """The senders' producer: deliveries retried for up to 10 minutes (a broker restart) before one
    is called failed, and room for the whole buffer."""
    return producer(kafka, **{"delivery.timeout.ms": 600_000, "queue.buffering.max.messages": buffer})


def encoded(serde: TopicSerde, topic: TopicSpec, event: Event | dict[str, Any]) -> tuple[bytes, str]:
    """An event's Avro bytes and key; ``event`` is a model or a ready Avro record (a dict)."""
    if isinstance(event, dict):
        return serde.encode(event), str(event[topic.key])
    return serde.encode_event(event), topic.key_of(event)


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
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()  # (queued at, build, *args)
        self._last_submit = 0.0  # monotonic time of the last submit
        self._buffer = buffer
        self._cv = threading.Condition()
        self._closed = False
        self.stats = SenderStats()
        self._producer = sender_producer(kafka, buffer)
        self._thread = threading.Thread(target=self._run, name="rftloop-event-sender", daemon=True)
        self._thread.start()

    def submit(self, build: Build, *args: Any) -> bool:
        """Queue ``build(*args)`` (called on the sender thread); False (and counted) when the buffer
        is full."""
        if self._closed:
            raise SenderClosed("this logger is closed; create a new one")
        if len(self._queue) + self.pending_in_kafka() >= self._buffer:
            count_dropped(self.stats, self._buffer)
            return False
        self._last_submit = now = time.monotonic()
        self._queue.append((now, build, *args))
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
            now = time.monotonic()
            if not self._closed and application_calling(
                now, self._last_submit, self._queue[0][0], len(self._queue), self._buffer
            ):
                time.sleep(DEFER_SLEEP_S)  # the application is calling: let it have the GIL
                continue
            item = self._queue.popleft()
            try:
                events = item[1](*item[2:])
                for topic, event in events:
                    os.sched_yield()  # release the GIL between steps (see below)
                    data, key = encoded(self._serde[topic.name], topic, event)
                    self._producer.produce(self._names[topic.name], data, key)
                    self.stats.sent += 1
            except Exception as exc:  # one bad event must not stop the thread
                self.stats.encode_errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.error("event not sent: %s", self.stats.last_error)
            self.stats.failed = self._producer.failed
            self.stats.delivered = self._producer.delivered
            # Release the GIL after each event: an application thread calling log() then usually waits
            # for one event's encoding, not for the interpreter's 5 ms switch interval. sched_yield, not
            # sleep(0): a zero sleep is a timer here and took 73 us, which capped the sender near 3k
            # calls/s.
            os.sched_yield()

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

    def _forked_away(self) -> None:
        """In a forked child: the producer's threads stayed in the parent, so it is never freed here
        (``forking.keep_alive``); the parent still delivers what this copy of the queue holds."""
        from producers.sdk import forking

        forking.keep_alive(self._producer)
        self._closed = True
        self._queue.clear()

    def close(self, timeout_s: float = 30) -> bool:
        ok = self.flush(timeout_s)
        self._closed = True
        with self._cv:
            self._cv.notify()
        self._thread.join(5)
        return ok

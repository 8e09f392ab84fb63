"""Dead letters: poison input goes to ``<topic>.dlq`` with its original bytes, never vanishes.

Headers on every dead letter:
``dlq.source.topic``, ``dlq.source.partition``, ``dlq.source.offset``,
``dlq.source.timestamp`` (ms), ``dlq.error.class``, ``dlq.error.message``,
``dlq.consumer`` (who gave up on it), plus the original record's headers.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Message, TopicPartition

from infra.kafka import Headers, TrackedProducer, consumer, header_list, produce
from infra.serde import SerdeError, TopicSerde
from infra.settings import KafkaSettings
from schemas.events import Event

log = logging.getLogger(__name__)

H_TOPIC = "dlq.source.topic"
H_PARTITION = "dlq.source.partition"
H_OFFSET = "dlq.source.offset"
H_TIMESTAMP = "dlq.source.timestamp"
H_ERROR_CLASS = "dlq.error.class"
H_ERROR_MESSAGE = "dlq.error.message"
H_CONSUMER = "dlq.consumer"
_OURS = {H_TOPIC, H_PARTITION, H_OFFSET, H_TIMESTAMP, H_ERROR_CLASS, H_ERROR_MESSAGE, H_CONSUMER}


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


def send_to_dlq(p: TrackedProducer, msg: Message, error: BaseException, consumer_name: str) -> None:
    """Publish the original key/value/headers of a confluent-kafka ``msg`` to its topic's DLQ."""
    send_dead_letter(
        p,
        topic=msg.topic() or "unknown",
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        timestamp_ms=msg.timestamp()[1],
        key=msg.key(),
        value=msg.value() or b"",
        headers=header_list(msg),
        error=error,
        consumer_name=consumer_name,
    )


def send_dead_letter(
    p: TrackedProducer,
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
    key: bytes | None,
    value: bytes,
    headers: Headers,
    error: BaseException,
    consumer_name: str,
) -> None:
    """Publish one record's original bytes to ``<topic>.dlq`` (any client: confluent-kafka, faust)."""
    out: Headers = [(k, v) for k, v in headers if k not in _OURS]
    out += [
        (H_TOPIC, topic.encode()),
        (H_PARTITION, str(partition).encode()),
        (H_OFFSET, str(offset).encode()),
        (H_TIMESTAMP, str(timestamp_ms).encode()),
        (H_ERROR_CLASS, type(error).__name__.encode()),
        (H_ERROR_MESSAGE, str(error)[:2000].encode(errors="replace")),
        (H_CONSUMER, consumer_name.encode()),
    ]
    log.warning(
        "dead letter topic=%s partition=%s offset=%s error=%s: %s",
        topic,
        partition,
        offset,
        type(error).__name__,
        error,
    )
    produce(p, dlq_topic(topic), key, value, headers=out)


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]

    @property
    def error(self) -> str:
        return f"{self.headers.get(H_ERROR_CLASS, '?')}: {self.headers.get(H_ERROR_MESSAGE, '')}"

    @property
    def source(self) -> str:
        return (
            f"{self.headers.get(H_TOPIC, '?')}[{self.headers.get(H_PARTITION, '?')}]"
            f"@{self.headers.get(H_OFFSET, '?')}"
        )


def _headers(msg: Message) -> dict[str, str]:
    return {k: v.decode(errors="replace") if isinstance(v, bytes) else (v or "") for k, v in header_list(msg)}


def read_all(
    settings: KafkaSettings, topic: str, limit: int = 1000, timeout_s: float = 10
) -> list[DeadLetter]:
    """Every dead letter of ``topic`` (up to ``limit``), without committing anything."""
    c = consumer(settings, f"rftloop-dlq-show-{uuid.uuid4().hex[:8]}")
    name = dlq_topic(topic)
    try:
        md = c.list_topics(name, timeout=10).topics.get(name)
        if md is None or md.error is not None:
            return []
        parts = []
        for pid in md.partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(name, pid), timeout=10)
            if hi > lo:
                parts.append((pid, lo, hi))
        c.assign([TopicPartition(name, pid, lo) for pid, lo, _ in parts])
        remaining = {pid: hi for pid, _, hi in parts}
        out: list[DeadLetter] = []
        deadline = time.monotonic() + timeout_s
        while remaining and len(out) < limit and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            part, off, key = msg.partition() or 0, msg.offset() or 0, msg.key()
            key_bytes = key.encode() if isinstance(key, str) else key
            out.append(DeadLetter(part, off, key_bytes, msg.value() or b"", _headers(msg)))
            if off + 1 >= remaining.get(part, 0):
                remaining.pop(part, None)
        return out
    finally:
        c.close()


def replay(
    settings: KafkaSettings,
    topic: str,
    p: TrackedProducer,
    accept: Callable[[bytes], bool] = lambda _v: True,
    timeout_s: float = 30,
) -> tuple[int, int]:
    """Re-publish dead letters to their source topic; returns (replayed, still_bad).

    Progress is a consumer group (``rftloop-dlq-replay.<topic>``) committed after
    the produce is flushed, so a second replay does not publish a letter twice.
    Letters ``accept`` refuses (still undecodable) are re-appended to the DLQ, so
    a later replay sees them again; this run stops at the DLQ's end as it was.
    """
    name = dlq_topic(topic)
    c = consumer(settings, f"rftloop-dlq-replay.{topic}")
    replayed = skipped = 0
    try:
        md = c.list_topics(name, timeout=10).topics.get(name)
        if md is None or md.error is not None:
            return 0, 0
        ends = {
            pid: c.get_watermark_offsets(TopicPartition(name, pid), timeout=10)[1] for pid in md.partitions
        }
        committed = c.committed([TopicPartition(name, pid) for pid in md.partitions], timeout=10)
        start = {tp.partition: max(tp.offset or 0, 0) for tp in committed}
        todo = {pid for pid, end in ends.items() if end > start.get(pid, 0)}
        if not todo:
            return 0, 0
        c.assign([TopicPartition(name, pid, start.get(pid, 0)) for pid in todo])
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            part, off = msg.partition() or 0, msg.offset() or 0
            if off >= ends[part]:
                todo.discard(part)
                continue
            value = msg.value() or b""
            if accept(value):
                headers: Headers = [(k, v) for k, v in header_list(msg) if k not in _OURS]
                headers.append(("dlq.replayed_from", f"{name}@{off}".encode()))
                produce(p, _headers(msg).get(H_TOPIC, topic), msg.key(), value, headers=headers)
                replayed += 1
            else:
                produce(p, name, msg.key(), value, headers=header_list(msg))
                skipped += 1
            if p.flush(30):
                raise RuntimeError("replay: records still undelivered; nothing committed")
            c.commit(message=msg, asynchronous=False)
            if off + 1 >= ends[part]:
                todo.discard(part)
        return replayed, skipped
    finally:
        c.close()


def decode_or_dead_letter(
    serde: TopicSerde, msg: Message, p: TrackedProducer, consumer_name: str
) -> Event | None:
    """The decoded event, or None after the message went to the DLQ (never raises SerdeError)."""
    try:
        return serde.decode_event(msg.value())
    except SerdeError as exc:
        send_to_dlq(p, msg, exc, consumer_name)
        return None

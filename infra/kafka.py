"""Kafka clients with safe defaults, and `rftloop topics ensure`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka import Consumer as _Consumer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from infra.retry import Retrier
from infra.settings import KafkaSettings
from schemas.topics import ALL_TOPICS, DLQ_CONFIG, TopicSpec

log = logging.getLogger(__name__)

Headers = list[tuple[str, str | bytes | None]]


def header_list(msg: Message) -> Headers:
    """A record's headers as a list of (name, value), whatever shape the client gave them in."""
    h = msg.headers() or []
    return list(h.items()) if isinstance(h, dict) else list(h)


class DeliveryFailed(KafkaException):
    """A record could not be delivered after librdkafka's retries; ``error`` is the last cause."""

    def __init__(self, message: str, error: KafkaError | None = None) -> None:
        super().__init__(message)
        self.error = error


class TrackedProducer:
    """An idempotent producer that counts what it delivered and what failed.

    Every record gets a delivery report; a failure is logged with topic,
    partition and key, and counted, so a caller (``producing``) can refuse to
    report success while records were lost.
    """

    def __init__(self, conf: dict[str, Any]) -> None:
        self.delivered = 0
        self.failed = 0
        self.last_error: KafkaError | None = None
        self.last_delivery_at = 0.0  # time.monotonic() of the last successful delivery
        self.broker_error: str | None = None  # the last client-level error (broker down, transport)
        self.broker_error_at = 0.0
        self._p = Producer({"error_cb": self._on_error, **conf})

    def _on_error(self, err: KafkaError) -> None:
        now = time.monotonic()
        if (
            err.code() == KafkaError._ALL_BROKERS_DOWN
            and self.broker_error
            and now - self.broker_error_at < 10
        ):
            # "1/1 brokers are down" follows the error that says why (refused, authentication): keep that
            self.broker_error_at = now
            return
        self.broker_error, self.broker_error_at = str(err), now

    def stalled(self) -> bool:
        """Records wait and the brokers reported an error since the last delivery (e.g. all down)."""
        return len(self._p) > 0 and self.broker_error_at > self.last_delivery_at

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
            self.last_delivery_at = time.monotonic()
            return
        self.failed += 1
        self.last_error = err
        log.error(
            "delivery failed topic=%s partition=%s key=%r: %s",
            msg.topic(),
            msg.partition(),
            msg.key(),
            err,
        )

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: str | bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue one record (``value`` None: a tombstone; ``partition`` None: by the key's hash);
        when the local queue is full, serve callbacks and retry."""
        to = -1 if partition is None else partition  # -1: librdkafka's partitioner picks
        while True:
            try:
                self._p.produce(
                    topic, value=value, key=key, headers=headers, partition=to, on_delivery=self._on_delivery
                )
                break
            except BufferError:
                self._p.poll(0.05)
        self._p.poll(0)

    def poll(self, timeout: float = 0) -> int:
        return int(self._p.poll(timeout))

    def flush(self, timeout: float = 30) -> int:
        return int(self._p.flush(timeout))

    def metadata(self, topic: str, timeout: float = 30) -> None:
        """Fetch ``topic``'s metadata now: connects to the brokers (raises KafkaException if none answers)."""
        self._p.list_topics(topic, timeout=timeout)

    def __len__(self) -> int:
        return len(self._p)


# A key's partition must be the same whoever writes it: the join reads a request's events from
# three topics by partition, and faust (the worker's own outputs, e.g. evaluator scores) and Java
# clients hash keys with murmur2. librdkafka's default (CRC32) put them elsewhere.
PARTITIONER = "murmur2_random"


def producer(settings: KafkaSettings, **overrides: Any) -> TrackedProducer:
    """Idempotent producer (acks=all, no duplicates on retry)."""
    conf: dict[str, Any] = {
        **settings.client_config(),
        "partitioner": PARTITIONER,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "delivery.timeout.ms": 120_000,
        **overrides,
    }
    return TrackedProducer(conf)


class TransactionalProducer(TrackedProducer):
    """A TrackedProducer whose records and consumer offsets commit together (Kafka transactions).

    Consume-transform-produce: ``begin()``, produce, ``commit(offsets, group)``; a failure
    inside aborts, and the caller rewinds its consumer to the committed offsets. A stable
    ``transactional.id`` lets a restarted process abort the transaction its predecessor left
    open (``init_transactions``) instead of waiting for the broker's transaction timeout.
    """

    def __init__(self, conf: dict[str, Any], init_timeout_s: float = 60) -> None:
        super().__init__(conf)
        self._p.init_transactions(init_timeout_s)

    def begin(self) -> None:
        self._p.begin_transaction()

    def commit(self, offsets: list[TopicPartition], group: Any, timeout_s: float = 60) -> None:
        """Commit the records produced since ``begin`` and the input ``offsets`` as one transaction."""
        if offsets:
            retrying(lambda: self._p.send_offsets_to_transaction(offsets, group, timeout_s), timeout_s)
        retrying(lambda: self._p.commit_transaction(timeout_s), timeout_s)

    def abort(self, timeout_s: float = 60) -> None:
        self._p.abort_transaction(timeout_s)

    def fatal_cause(self, err: KafkaError) -> KafkaError:
        """What put the producer in its fatal state. A call made in that state (produce) fails with
        only ``_FATAL``; librdkafka keeps the cause (a fence, say) and answers any transaction call
        with it, so one is made to read it. ``err`` itself when it already names a cause."""
        if err.code() != KafkaError._FATAL:
            return err
        try:
            self._p.begin_transaction()
        except KafkaException as exc:
            cause = exc.args[0]
            return cause if isinstance(cause, KafkaError) and cause.fatal() else err
        self._p.abort_transaction(5)  # not fatal after all: leave no transaction open
        return err


def retrying(call: Callable[[], None], within_s: float) -> None:
    """Run a transaction step again while it fails retriably (librdkafka's transactional contract),
    for at most ``within_s``: past the transaction's lifetime the broker aborts it anyway, and the
    stage's own loop (``streams.transactional``) replaces the producer and goes on retrying."""
    deadline = time.monotonic() + within_s
    attempt = 0
    while True:
        try:
            call()
            return
        except KafkaException as exc:
            attempt += 1
            if not exc.args[0].retriable() or time.monotonic() >= deadline:
                raise
            log.warning("transaction step failed (attempt %d), retrying: %s", attempt, exc)
            time.sleep(min(2.0, 0.25 * attempt))


def transactional_producer(
    settings: KafkaSettings, transactional_id: str, transaction_timeout_s: float = 10, **overrides: Any
) -> TransactionalProducer:
    """Transactional (hence idempotent) producer; a dead owner's open transaction is aborted by
    the broker after ``transaction_timeout_s`` (read_committed readers wait until then)."""
    conf: dict[str, Any] = {
        **settings.client_config(),
        "transactional.id": transactional_id,
        "transaction.timeout.ms": int(transaction_timeout_s * 1000),
        "partitioner": PARTITIONER,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        **overrides,
    }
    return TransactionalProducer(conf)


@contextmanager
def producing(
    settings: KafkaSettings, flush_timeout_s: float = 60, **overrides: Any
) -> Iterator[TrackedProducer]:
    """A producer flushed on exit; raises DeliveryFailed if any record was not delivered."""
    p = producer(settings, **overrides)
    try:
        yield p
    finally:
        left = p.flush(flush_timeout_s)
        if left or p.failed:
            raise DeliveryFailed(
                f"{p.failed} record(s) failed ({p.last_error}), {left} still undelivered "
                f"after {flush_timeout_s}s",
                p.last_error,
            )


def produce(
    p: TrackedProducer,
    topic: str,
    key: str | bytes | None,
    value: bytes,
    headers: Headers | None = None,
) -> None:
    p.produce(topic, value, key, headers)


def consumer(settings: KafkaSettings, group_id: str, **overrides: Any) -> _Consumer:
    """Consumer with auto-commit off: commit after the side effect."""
    conf: dict[str, Any] = {
        **settings.client_config(),
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        **overrides,
    }
    return _Consumer(conf)


def admin(settings: KafkaSettings) -> AdminClient:
    conf: dict[str, Any] = {**settings.client_config()}
    return AdminClient(conf)


@dataclass(frozen=True)
class TopicReport:
    topic: str
    action: str  # created | ok | differs
    differences: tuple[str, ...] = ()


def wanted_topics(
    settings: KafkaSettings, specs: tuple[TopicSpec, ...] | list[TopicSpec] = ALL_TOPICS
) -> list[tuple[str, int, dict[str, str]]]:
    """(name, partitions, config) for each event topic and its dead-letter topic."""
    out = []
    for t in specs:
        out.append((t.name, t.partitions or settings.partitions, {**dict(t.config), **_isr(settings)}))
        out.append((t.dlq, 1, {**dict(DLQ_CONFIG), **_isr(settings)}))
    return out


def _isr(settings: KafkaSettings) -> dict[str, str]:
    """min.insync.replicas for the topics rftloop creates, when set (else the brokers' default)."""
    n = settings.min_insync_replicas
    return {} if n is None else {"min.insync.replicas": str(n)}


def wait_visible(a: AdminClient, names: list[str], timeout_s: float = 30) -> None:
    """New topics take a moment to reach every broker's metadata; wait for leaders."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        topics = a.list_topics(timeout=10).topics
        if all(
            n in topics
            and topics[n].error is None
            and topics[n].partitions
            and all(p.leader >= 0 for p in topics[n].partitions.values())
            for n in names
        ):
            return
        time.sleep(0.1)
    raise KafkaException(f"topics {names} not visible with leaders after {timeout_s}s")


def ensure_topics(settings: KafkaSettings, only: list[TopicSpec] | None = None) -> list[TopicReport]:
    """Create missing topics; report (never change) differences on existing ones."""
    a = admin(settings)
    wanted = wanted_topics(settings, ALL_TOPICS if only is None else only)
    existing = a.list_topics(timeout=10).topics
    reports: list[TopicReport] = []
    to_create = [
        NewTopic(name, partitions, settings.replication_factor, config=config)
        for name, partitions, config in wanted
        if name not in existing
    ]
    if to_create:
        for name, fut in a.create_topics(to_create, operation_timeout=30).items():
            try:
                fut.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
            reports.append(TopicReport(name, "created"))
        wait_visible(a, [t.topic for t in to_create])
    present = [(n, p, c) for n, p, c in wanted if n in existing]
    if present:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n, _, _ in present]
        configs = {r.name: f.result() for r, f in a.describe_configs(resources).items()}
        for name, partitions, config in present:
            diffs = []
            have = len(existing[name].partitions)
            if have != partitions:
                diffs.append(f"partitions {have} (wanted {partitions})")
            for key, value in config.items():
                entry = configs[name].get(key)
                if entry is None or entry.value != value:
                    diffs.append(f"{key}={entry.value if entry else None} (wanted {value})")
            reports.append(TopicReport(name, "differs" if diffs else "ok", tuple(diffs)))
    return reports


def ensure_plain_topic(
    settings: KafkaSettings, name: str, partitions: int, config: dict[str, str] | None = None
) -> None:
    """Create one topic outside the event catalogue (e.g. a stream processor's internal topic) and
    wait until the brokers report it, so a consumer subscribing right after sees it."""
    a = admin(settings)
    if name in a.list_topics(timeout=10).topics:
        return
    try:
        conf = {**_isr(settings), **(config or {})}
        topic = NewTopic(name, partitions, settings.replication_factor, config=conf)
        a.create_topics([topic], operation_timeout=30)[name].result()
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    wait_visible(a, [name])


def assign_from_start(c: _Consumer, topics: list[str], retry: Retrier) -> dict[tuple[str, int], int]:
    """Assign every partition of ``topics`` from its first offset (a reader that rebuilds its state
    by replay: no group, nothing committed) and return each non-empty partition's end offset now:
    the replay has caught up once it has read up to those. A topic that does not exist (yet) is
    empty: its partition 0 is assigned, so records written once it is created are read. Broker
    trouble is retried (``retry``)."""
    tps: list[TopicPartition] = []
    ends: dict[tuple[str, int], int] = {}
    for topic in topics:
        md = retry.call(f"metadata of {topic}", partial(c.list_topics, topic, timeout=30)).topics.get(topic)
        if md is None or md.error is not None or not md.partitions:
            tps.append(TopicPartition(topic, 0, OFFSET_BEGINNING))
            continue
        for p in md.partitions:
            tp = TopicPartition(topic, p, OFFSET_BEGINNING)
            end = retry.call(f"end offset of {topic}[{p}]", partial(c.get_watermark_offsets, tp, timeout=10))[
                1
            ]
            if end > 0:
                ends[(topic, p)] = end
            tps.append(tp)
    c.assign(tps)
    return ends

"""Kafka clients with safe defaults, and `rftloop topics ensure`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka import Consumer as _Consumer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from infra.settings import KafkaSettings
from schemas.topics import ALL_TOPICS, DLQ_CONFIG, TopicSpec

log = logging.getLogger(__name__)


class DeliveryFailed(KafkaException):
    """A record could not be delivered after librdkafka's retries."""


def _on_delivery(err: KafkaError | None, msg: Message) -> None:
    if err is not None:
        log.error(
            "delivery failed topic=%s partition=%s key=%r: %s",
            msg.topic(), msg.partition(), msg.key(), err,
        )


def producer(settings: KafkaSettings, **overrides: Any) -> Producer:
    """Idempotent producer (acks=all, no duplicates on retry)."""
    conf: dict[str, Any] = {
        **settings.client_config(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "delivery.timeout.ms": 120_000,
        **overrides,
    }
    return Producer(conf)


@contextmanager
def producing(settings: KafkaSettings, flush_timeout_s: float = 30, **overrides: Any) -> Iterator[Producer]:
    """A producer that is flushed on exit; raises if records are still undelivered."""
    p = producer(settings, **overrides)
    try:
        yield p
    finally:
        left = p.flush(flush_timeout_s)
        if left:
            raise DeliveryFailed(f"{left} record(s) still undelivered after {flush_timeout_s}s")


def produce(p: Producer, topic: str, key: str | bytes | None, value: bytes, **kw: Any) -> None:
    """Produce with a delivery report; on a full local queue, serve callbacks and retry."""
    while True:
        try:
            p.produce(topic, value=value, key=key, on_delivery=kw.pop("on_delivery", _on_delivery), **kw)
            break
        except BufferError:
            p.poll(0.05)
    p.poll(0)


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
    return AdminClient(settings.client_config())


@dataclass(frozen=True)
class TopicReport:
    topic: str
    action: str  # created | ok | differs
    differences: tuple[str, ...] = ()


def wanted_topics(settings: KafkaSettings) -> list[tuple[str, int, dict[str, str]]]:
    """(name, partitions, config) for every event topic and its dead-letter topic."""
    out = []
    for t in ALL_TOPICS:
        out.append((t.name, t.partitions or settings.partitions, dict(t.config)))
        out.append((t.dlq, 1, dict(DLQ_CONFIG)))
    return out


def ensure_topics(settings: KafkaSettings, only: list[TopicSpec] | None = None) -> list[TopicReport]:
    """Create missing topics; report (never change) differences on existing ones."""
    a = admin(settings)
    wanted = wanted_topics(settings)
    if only is not None:
        names = {t.name for t in only} | {t.dlq for t in only}
        wanted = [w for w in wanted if w[0] in names]
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

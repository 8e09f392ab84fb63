"""Publish one event now (flushed, delivery checked): for the rare, important events — version
decisions, training runs — where a caller wants to know it is on Kafka before going on.

``publish_event`` starts a producer and looks the schema up for the one event: right for a CLI
command or a training run. A process that publishes decisions that must take effect at once (the
canary judge: a rollback) keeps a ``Publisher``: its producer's broker connections and idempotent
producer id, and each topic's schema id, are set up once (``warm``), so a decision costs one
produce and its flush. In make demo run 15 of 2026-12-06 a rollback published through a fresh
producer and registry lookup reached the gateway 1,317 ms after the judge decided it (80-100 ms in
the other runs), and one request went to the rolled-back version in that gap.
"""

from __future__ import annotations

from dataclasses import replace

from infra import registry as registry_mod
from infra.kafka import DeliveryFailed, TrackedProducer, produce, producer
from infra.serde import TopicSerde
from infra.settings import KafkaSettings, RegistrySettings
from schemas.events import Event
from schemas.topics import TopicSpec


def publish_event(
    kafka: KafkaSettings, registry: RegistrySettings, spec: TopicSpec, event: Event, topic_suffix: str = ""
) -> None:
    """One event through a publisher of its own (a producer started and closed for it)."""
    publisher = Publisher(kafka, registry, topic_suffix, timeout_s=60)
    try:
        publisher.publish(spec, event)
    finally:
        publisher.close()


class Publisher:
    """A long-lived publisher: one producer and one serde per topic, kept between events.

    ``publish`` raises ``DeliveryFailed`` when the event is not acknowledged within ``timeout_s``
    (the caller retries: ``infra.retry``); the producer is then dropped, so the next try starts a
    fresh one rather than waiting behind the undelivered record."""

    def __init__(
        self, kafka: KafkaSettings, registry: RegistrySettings, topic_suffix: str = "", timeout_s: float = 30
    ) -> None:
        self.kafka, self.topic_suffix, self.timeout_s = kafka, topic_suffix, timeout_s
        self._registry = registry_mod.client(registry)
        self._serdes: dict[str, TopicSerde] = {}
        self._producer: TrackedProducer | None = None

    def _serde(self, spec: TopicSpec) -> TopicSerde:
        if spec.name not in self._serdes:
            self._serdes[spec.name] = TopicSerde(
                self._registry, replace(spec, name=spec.name + self.topic_suffix)
            )
        return self._serdes[spec.name]

    def _p(self) -> TrackedProducer:
        if self._producer is None:
            self._producer = producer(self.kafka)
        return self._producer

    def warm(self, *specs: TopicSpec) -> None:
        """Set up now what the first event would: the schema ids and the producer's broker metadata
        (raises what the registry or Kafka raise; what is not set up now, the first publish sets up)."""
        for spec in specs:
            serde = self._serde(spec)
            _ = serde.schema_id  # a property: looked up in the registry on first use
            self._p().metadata(serde.topic.name, self.timeout_s)

    def publish(self, spec: TopicSpec, event: Event) -> None:
        serde = self._serde(spec)
        p = self._p()
        failed = p.failed
        produce(p, serde.topic.name, serde.topic.key_of(event), serde.encode_event(event))
        left = p.flush(self.timeout_s)
        if left or p.failed > failed:
            self._producer = None  # a fresh producer for the retry; this one's queue is dropped with it
            raise DeliveryFailed(
                f"{spec.name}: {p.failed - failed} record(s) failed ({p.last_error}), {left} still "
                f"undelivered after {self.timeout_s}s",
                p.last_error,
            )

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout_s)
            self._producer = None

"""Publish one event now (flushed, delivery checked): for the rare, important events — version
decisions, training runs — where a caller wants to know it is on Kafka before going on."""

from __future__ import annotations

from dataclasses import replace

from infra import registry as registry_mod
from infra.kafka import produce, producing
from infra.serde import TopicSerde
from infra.settings import KafkaSettings, RegistrySettings
from schemas.events import Event
from schemas.topics import TopicSpec


def publish_event(
    kafka: KafkaSettings, registry: RegistrySettings, spec: TopicSpec, event: Event, topic_suffix: str = ""
) -> None:
    topic = replace(spec, name=spec.name + topic_suffix)
    serde = TopicSerde(registry_mod.client(registry), topic)
    with producing(kafka) as p:
        produce(p, topic.name, topic.key_of(event), serde.encode_event(event))

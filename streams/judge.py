"""The canary judge process: follows ``model.versions`` and ``llm.metrics.window`` and publishes the
decisions of its ``CanaryBook`` (the rules are in ``streams.verdict``).

Both topics are read from the beginning (no consumer group): a restarted judge rebuilds its state
by replay and decides nothing until it has caught up with where both topics ended at its start.
Kafka trouble is retried (``infra.retry``); a decision's event id is derived from the decision, so
a publish retried or re-taken after a restart is one event for every reader.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial

from confluent_kafka import KafkaException

from infra import registry as registry_mod
from infra.kafka import assign_from_start, consumer
from infra.publish import Publisher
from infra.retry import Retrier, Stopped
from infra.serde import SerdeError, TopicSerde
from infra.settings import JudgeSettings, KafkaSettings, RegistrySettings
from schemas.events import MetricsWindow, ModelVersionEvent
from schemas.topics import METRICS, VERSIONS
from streams.canary_book import CanaryBook

log = logging.getLogger(__name__)


class Judge:
    def __init__(self, kafka: KafkaSettings, registry: RegistrySettings, cfg: JudgeSettings) -> None:
        self.kafka, self.registry, self.cfg = kafka, registry, cfg
        reg = registry_mod.client(registry)
        self.versions_topic = replace(VERSIONS, name=VERSIONS.name + cfg.topic_suffix)
        self.metrics_topic = replace(METRICS, name=METRICS.name + cfg.topic_suffix)
        self.serde = {
            VERSIONS.name: TopicSerde(reg, self.versions_topic),
            METRICS.name: TopicSerde(reg, self.metrics_topic),
        }
        self.book = CanaryBook(cfg)
        self.decisions: list[ModelVersionEvent] = []
        self.caught_up = False  # replayed both topics up to their ends at start
        self._stop = threading.Event()
        self.kafka_retry = Retrier("judge", self._stop)
        # kept warm: a rollback must reach the gateways at once (infra/publish.py)
        self.publisher = Publisher(kafka, registry, cfg.topic_suffix)

    def stop(self) -> None:
        self._stop.set()

    def evaluate(self, now: datetime | None = None) -> list[ModelVersionEvent]:
        """Take and publish the decisions due now."""
        out = self.book.decide(now or datetime.now(UTC))
        for event in out:
            self.kafka_retry.call(
                f"publishing {event.kind.value} {event.version}",
                partial(self.publisher.publish, VERSIONS, event),
            )
            log.info("%s %s: %s", event.kind.value, event.version, "; ".join(event.reasons or []))
            self.decisions.append(event)
        return out

    def run(self, max_seconds: float | None = None) -> None:
        """Follow both topics from the beginning (state is rebuilt on restart) and decide as windows arrive."""
        c = consumer(self.kafka, f"rftloop-judge-{uuid.uuid4().hex[:8]}")
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        last_eval = 0.0
        try:
            # Decide nothing until both topics are replayed to where they ended at the start: the
            # decisions already taken (manual ones too) and the windows already closed.
            pending = assign_from_start(
                c, [self.versions_topic.name, self.metrics_topic.name], self.kafka_retry
            )
            try:
                self.publisher.warm(VERSIONS)
            except (KafkaException, SerdeError) as exc:  # the first decision's publish sets it up, retried
                log.warning("judge: the decisions' producer is not set up yet: %s", exc)
            self.caught_up = not pending
            while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
                for msg in c.consume(500, 0.5):
                    if msg.error():
                        continue
                    where = (msg.topic() or "", msg.partition() or 0)
                    if where in pending and (msg.offset() or 0) + 1 >= pending[where]:
                        del pending[where]
                        self.caught_up = not pending
                    base = VERSIONS.name if msg.topic() == self.versions_topic.name else METRICS.name
                    try:
                        event = self.serde[base].decode_event(msg.value())
                    except SerdeError as exc:
                        log.error("judge: %s offset %s undecodable: %s", msg.topic(), msg.offset(), exc)
                        continue
                    if isinstance(event, ModelVersionEvent):
                        self.book.on_version(event)
                    elif isinstance(event, MetricsWindow):
                        self.book.on_window(event)
                if not pending and time.monotonic() - last_eval >= 1.0:
                    last_eval = time.monotonic()
                    self.evaluate()
        except Stopped:
            log.info("judge: stopped while Kafka was failing")
        finally:
            c.close()
            self.publisher.close()

"""Follow the compacted ``model.versions`` topic and apply it: load adapters, shift traffic.

Read from the beginning on start (no consumer group), so a restarted gateway
rebuilds its routing table; then keep following. A published adapter is loaded
only from the artifact root and only when its sha256 matches the event
(infra/adapters.py); a refused one is logged and listed in /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from infra import adapters
from infra import registry as registry_mod
from infra.kafka import assign_from_start, consumer
from infra.publish import publish_event
from infra.retry import FatalKafkaError, Retrier, Stopped
from infra.serde import SerdeError, TopicSerde
from infra.settings import GatewaySettings, KafkaSettings, RegistrySettings
from producers.gateway.router import Router, UnknownVersion
from schemas.events import ModelVersionEvent, VersionEventKind
from schemas.topics import VERSIONS

log = logging.getLogger(__name__)
REFUSALS = uuid.UUID("6f1d6c3e-2a8b-4b7e-9a51-1c0de0f1a004")


class VersionFollower:
    def __init__(
        self,
        kafka: KafkaSettings,
        registry: RegistrySettings,
        settings: GatewaySettings,
        router: Router,
        load: Callable[[str, int, str], Any],
        loop: asyncio.AbstractEventLoop,
        instance: str = "",
    ) -> None:
        self.topic = replace(VERSIONS, name=VERSIONS.name + settings.topic_suffix)
        self.serde = TopicSerde(registry_mod.client(registry), self.topic)
        self.kafka, self.registry, self.settings, self.router = kafka, registry, settings, router
        self.instance = instance
        self._load, self._loop = load, loop
        self._next_lora_id = 1
        self.applied = 0
        self.refused: dict[str, str] = {}
        self.loaded_at: dict[str, float] = {}  # version -> time.time() when it began serving
        # version -> ms from its latest decision's occurred_at (the judge's clock) to applied here;
        # requests routed in that gap still follow the decision before it (/healthz)
        self.decision_lag_ms: dict[str, float] = {}
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self.kafka_retry = Retrier("gateway version follower", self._stop)  # shown in /healthz
        self.fatal: str | None = None
        self._thread = threading.Thread(target=self._run, name="rftloop-versions", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        # a tiny topic whose events must take effect at once: fetch without librdkafka's 500 ms wait
        c = consumer(self.kafka, f"rftloop-gateway-{uuid.uuid4().hex[:8]}", **{"fetch.wait.max.ms": 20})
        try:
            try:
                ends = assign_from_start(c, [self.topic.name], self.kafka_retry)
            except Stopped:
                return
            remaining = {p: end for (_, p), end in ends.items()}  # replay up to here = caught up
            if not remaining:
                self.caught_up.set()
            while not self._stop.is_set():
                msg = c.poll(0.1)
                if msg is None or msg.error():
                    continue
                try:
                    event = self.serde.decode_event(msg.value())
                    assert isinstance(event, ModelVersionEvent)
                    if event.model == self.settings.served_name:
                        self.apply(event)
                except SerdeError as exc:
                    log.error("model.versions offset %s undecodable: %s", msg.offset(), exc)
                p = msg.partition() or 0
                if p in remaining and (msg.offset() or 0) + 1 >= remaining[p]:
                    del remaining[p]
                    if not remaining:
                        self.caught_up.set()
        except FatalKafkaError as exc:  # e.g. not authorized to read model.versions: stop serving
            self.fatal = str(exc)
            log.critical("gateway: stopping: %s", exc)
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            c.close()

    def apply(self, event: ModelVersionEvent) -> None:
        version = event.version
        try:
            if event.kind == VersionEventKind.published and version in self.router.routes:
                log.info("version %s announced again; already serving it", version)
            elif event.kind == VersionEventKind.published:
                path = adapters.verify(
                    event.adapter_uri or "",
                    event.adapter_sha256,
                    self.settings.adapter_root,
                    self.settings.lora_targets(),
                )
                lora_id = self._next_lora_id
                self._next_lora_id += 1
                future = asyncio.run_coroutine_threadsafe(self._load(version, lora_id, str(path)), self._loop)
                future.result(timeout=120)
                self.router.apply(event)
                self.router.add(version, str(path), lora_id)
                self.loaded_at[version] = time.time()
                self.refused.pop(version, None)
                log.info("version %s loaded from %s, traffic %s", version, path, self.router.weights())
            else:
                self.router.apply(event)
                lag = (time.time() - event.occurred_at.timestamp()) * 1000
                if self.caught_up.is_set():  # a replayed decision's age is not a lag
                    self.decision_lag_ms[version] = round(lag, 1)
                log.info(
                    "version %s %s (%.0f ms after the decision): %s",
                    version,
                    event.kind.value,
                    lag,
                    self.router.weights(),
                )
            self.applied += 1
        except adapters.AdapterRefused as exc:
            self.router.apply(event)  # the fold knows it as every reader does; it gets no traffic here
            self.refuse(event, str(exc))
            log.error("version %s refused: %s", version, exc)
        except UnknownVersion:
            log.warning("%s for version %s, which this gateway never loaded", event.kind.value, version)
        except Exception as exc:  # loading failed in the engine: keep serving the others
            if event.kind == VersionEventKind.published:
                self.router.apply(event)
            self.refuse(event, f"{type(exc).__name__}: {exc}")
            log.exception("version %s could not be applied", version)

    def refuse(self, event: ModelVersionEvent, reason: str) -> None:
        """Keep serving the others, list it in /healthz, and say so on model.versions (kind
        rejected, decision refused: one replica's report, not the version's state), so the judge
        can name the reason when a candidate gets no traffic. Replayed on restart: same event id."""
        self.refused[event.version] = reason
        if event.kind != VersionEventKind.published:
            return
        report = ModelVersionEvent(
            event_id=uuid.uuid5(REFUSALS, f"{event.model}|{event.version}|{self.instance}"),
            producer=f"rftloop-gateway@{self.instance}",
            kind=VersionEventKind.rejected,
            model=event.model,
            version=event.version,
            parent_version=event.parent_version,
            decision="refused",
            reasons=[f"refused by gateway {self.instance}: {reason}"],
            actor=f"gateway:{self.instance}",
        )
        with contextlib.suppress(Stopped):  # shutting down: the replay at the next start re-sends it
            self.kafka_retry.call(
                f"reporting the refusal of {event.version}",
                partial(
                    publish_event, self.kafka, self.registry, VERSIONS, report, self.settings.topic_suffix
                ),
            )

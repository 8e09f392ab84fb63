"""Exactly one active trainer per served model, on Kafka's group protocol (no lock service).

Every `rftloop trainer` for a model joins the consumer group ``rftloop-trainer-<model>`` on the
one-partition topic ``rftloop.trainer.lease``; the member the group assigns partition 0 is the
active trainer, the others wait. librdkafka heartbeats from its own thread, so a long training run
keeps the lease (``max.poll.interval.ms`` allows 2 h between polls) while a trainer that dies is
out of the group after ``session.timeout.ms`` (10 s) and the next member takes over.

When a trainer joins, the group rebalances and the lease may move to it — but never in the middle
of a run: the holder only rejoins (and can lose the lease) when it polls between runs, and the
group waits for it. At most one member holds the partition at any time.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from infra.kafka import consumer, ensure_plain_topic
from infra.settings import KafkaSettings

log = logging.getLogger(__name__)
TOPIC = "rftloop.trainer.lease"


class Lease:
    def __init__(
        self, kafka: KafkaSettings, model: str, suffix: str = "", session_timeout_ms: int = 10_000
    ) -> None:
        self.topic = TOPIC + suffix
        ensure_plain_topic(kafka, self.topic, 1)
        self.held = False
        self._c = consumer(
            kafka,
            f"rftloop-trainer-{model}{suffix}",
            **{
                "session.timeout.ms": session_timeout_ms,
                "heartbeat.interval.ms": max(500, session_timeout_ms // 10),
                "max.poll.interval.ms": 7_200_000,
            },
        )
        self._c.subscribe(
            [self.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )

    def _assigned(self, _c: Any, partitions: list[Any]) -> None:
        self.held = bool(partitions)

    def _revoked(self, _c: Any, _partitions: list[Any]) -> None:
        self.held = False

    def poll(self, seconds: float) -> bool:
        """Serve the group protocol for `seconds`; True while this trainer holds the lease."""
        deadline = time.monotonic() + seconds
        while True:
            self._c.poll(min(0.5, max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                return self.held

    def close(self) -> None:
        self._c.close()

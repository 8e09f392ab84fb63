"""One policy for Kafka errors in every long-running process: ride through what is retriable, stop
on what is not, and say which.

librdkafka marks each error ``retriable()`` (try the same call again: a coordinator still loading,
a leader moving, a broker down) or not (authorization failed, unknown topic, fenced). A process
that exits on a retriable error turns one dead broker of three into an outage, so every
long-running rftloop process (the sink, the stream stages, the judge, the trainer daemon, the
gateway's version follower) calls Kafka through a :class:`Retrier`:

- a retriable error is retried with capped exponential backoff for as long as it stays retriable,
  or until the process is asked to stop (:class:`Stopped`); each retry logs the step, the error
  and how long it has lasted, and :meth:`Retrier.health` says the same for ``healthz`` / ``/stats/``;
- anything else raises :class:`FatalKafkaError`, whose message names the step and the cause
  (``TOPIC_AUTHORIZATION_FAILED``, ``_UNKNOWN_TOPIC`` ...), and the process stops with it.

Written here, not taken from a library: the retry decision is librdkafka's own flag plus a few
codes it leaves unflagged on some calls (a commit's ``_TRANSPORT``), and the backoff must wake on
the process's stop event, which tenacity-style decorators do not know about.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException

log = logging.getLogger(__name__)
T = TypeVar("T")

# Codes that are transient whatever flag a particular call put on them: the cluster is changing
# (coordinator moving or loading, leader election, rebalance) or a broker is unreachable for now.
TRANSIENT = frozenset(
    {
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.CONCURRENT_TRANSACTIONS,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._WAIT_COORD,
        KafkaError._MSG_TIMED_OUT,
    }
)


class FatalKafkaError(RuntimeError):
    """A Kafka error that retrying cannot mend; the message names the step and the cause."""

    def __init__(self, what: str, error: KafkaError | str) -> None:
        self.error = error
        cause = f"{error.name()}: {error.str()}" if isinstance(error, KafkaError) else str(error)
        super().__init__(f"{what}: {cause} (not retriable)")


class Stopped(Exception):
    """The process was asked to stop while a step was still being retried."""


def kafka_error(exc: BaseException) -> KafkaError | str:
    """The KafkaError inside ``exc`` (``DeliveryFailed`` carries its last one), else its text."""
    inner = getattr(exc, "error", None)
    if isinstance(inner, KafkaError):
        return inner
    arg = exc.args[0] if exc.args else None
    return arg if isinstance(arg, KafkaError) else str(exc)


def is_retriable(error: KafkaError | str) -> bool:
    """True when the same call may succeed later. A KafkaException that carries only text is one
    of ours (a wait that timed out, records still undelivered): retriable."""
    if isinstance(error, str):
        return True
    return bool(error.retriable()) or error.code() in TRANSIENT


@dataclass
class Trouble:
    """A step that has been failing since ``since`` (time.monotonic())."""

    step: str
    error: str
    since: float
    attempts: int


class Retrier:
    """Calls Kafka for one process (``what``); see the module doc.

    ``stop`` ends a retry early (:class:`Stopped`); ``sleep`` and ``clock`` are for tests."""

    def __init__(
        self,
        what: str,
        stop: threading.Event | None = None,
        *,
        base_s: float = 0.2,
        cap_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.stop = stop or threading.Event()
        self.base_s, self.cap_s, self.clock = base_s, cap_s, clock
        self.trouble: Trouble | None = None
        self.retries = 0  # over the process's life

    def call(self, step: str, fn: Callable[[], T]) -> T:
        """``fn()``, again while it fails retriably."""
        while True:
            try:
                out = fn()
            except KafkaException as exc:
                self.failed(step, exc)
                continue
            self.recovered(step)
            return out

    def failed(self, step: str, exc: BaseException) -> None:
        """Account one failure of ``step`` and wait the backoff; raises FatalKafkaError when it is
        not retriable, Stopped when the process stops meanwhile. For loops that retry themselves."""
        error = kafka_error(exc)
        if not is_retriable(error):
            self.trouble = None
            raise FatalKafkaError(f"{self.what}: {step}", error) from exc
        now = self.clock()
        if self.trouble is None or self.trouble.step != step:
            self.trouble = Trouble(step, "", now, 0)
        t = self.trouble
        t.attempts += 1
        t.error = str(error)
        self.retries += 1
        delay = min(self.cap_s, self.base_s * 2 ** min(t.attempts - 1, 16))
        log.warning(
            "%s: %s failing for %.1f s (attempt %d), retrying in %.1f s: %s",
            self.what,
            step,
            now - t.since,
            t.attempts,
            delay,
            t.error,
        )
        if self.stop.wait(delay):
            raise Stopped(f"{self.what}: stopped while retrying {step} ({t.error})") from exc

    def recovered(self, step: str) -> None:
        t = self.trouble
        if t is not None and t.step == step:
            log.info(
                "%s: %s recovered after %.1f s and %d retries",
                self.what,
                step,
                self.clock() - t.since,
                t.attempts,
            )
            self.trouble = None

    def health(self) -> dict[str, Any]:
        """For healthz / stats: ``{"kafka": "ok"}`` or the failing step, its error and how long."""
        t = self.trouble
        if t is None:
            return {"kafka": "ok", "kafka_retries": self.retries}
        return {
            "kafka": "retrying",
            "kafka_step": t.step,
            "kafka_error": t.error,
            "kafka_failing_s": round(self.clock() - t.since, 1),
            "kafka_retries": self.retries,
        }

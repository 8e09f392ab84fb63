"""A consume-transform-produce loop that commits each batch exactly once (Kafka transactions).

Each stage (the windows' stage 1, the join) is a confluent-kafka loop in a thread of every
``rftloop streams`` worker, in its own consumer group ``<app_id>-<stage>`` (N workers split the
partitions): a batch's outputs, its dead letters and its input offsets commit in one Kafka
transaction, so after a kill -9 anywhere a batch is either wholly visible with its offsets
committed, or not at all and processed again by whoever owns the partitions next. Readers of the
outputs read ``read_committed``.

The transactional id is stable per worker (``RFTLOOP_STREAMS_INSTANCE_ID``, else host + data
dir): a restarted worker aborts the batch its predecessor left open at once; a worker that never
comes back has its open batch aborted by the broker after ``RFTLOOP_STREAMS_TRANSACTION_TIMEOUT_S``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import threading
import time
from collections import Counter
from typing import Any, ClassVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from infra import failpoints
from infra.kafka import TransactionalProducer, consumer, transactional_producer
from infra.retry import FatalKafkaError, Retrier, Stopped, is_retriable, kafka_error
from infra.settings import KafkaSettings, StreamsSettings
from streams.stats import StreamStats

log = logging.getLogger(__name__)

MAX_RESTARTS = 5
_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
# A producer can be fenced by its own retry. In the 3-broker test (one broker killed), stage 1's batch
# aborted with _TIMED_OUT ("requires epoch bump") while the coordinator moved; 8 s later the next
# EndTxn failed with _FENCED ("fenced by a newer instance") though no other worker existed: a request
# that reached the old coordinator bumped the epoch, and its retry came with the old one. So a fence
# within this long of a failed batch or transaction (not counting fences) replaces the producer under
# the same id, once until a batch commits, instead of stopping the worker. A second fence before a
# commit stops it, as does any fence outside that window: two workers given one id then settle (one
# keeps it) within the window at most, instead of taking it from each other for ever.
SELF_FENCE_WINDOW_S = 120.0


class WorkerFenced(RuntimeError):
    """Another worker started with this worker's transactional id and took over its batches."""


def fenced(err: KafkaError | None, p: TransactionalProducer | None) -> bool:
    """Whether ``err`` says that a newer producer took this transactional id (asking the producer
    for the cause behind a bare ``_FATAL``). Such a producer must never be replaced under the same
    id: the replacement would fence the newer worker in turn, and the two would take the id from
    each other (a livelock CI saw as no windows at all)."""
    if err is None:
        return False
    if p is not None and err.code() == KafkaError._FATAL:
        with contextlib.suppress(KafkaException):  # the producer could not say: judge by err alone
            err = p.fatal_cause(err)
    return err.code() in _FENCED


def _fenced_error(transactional_id: str) -> WorkerFenced:
    return WorkerFenced(
        f"transactional id {transactional_id} was taken over by a newer worker: "
        "give each worker its own RFTLOOP_STREAMS_INSTANCE_ID (or data dir)"
    )


def instance_id(settings: StreamsSettings) -> str:
    """This worker's stable identity across restarts (it names its transactional producers)."""
    if settings.instance_id:
        return settings.instance_id
    where = f"{socket.gethostname()}:{settings.data_dir.resolve()}"
    return hashlib.sha256(where.encode()).hexdigest()[:12]


def next_offsets(batch: list[Message]) -> list[TopicPartition]:
    """Per input partition, the offset after the last record of the batch (what to commit)."""
    last: dict[tuple[str, int], int] = {}
    for msg in batch:
        if not msg.error():
            last[(msg.topic() or "", msg.partition() or 0)] = msg.offset() or 0
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


def rewind(c: Consumer) -> bool:
    """Back to the committed offsets of every assigned partition (after an aborted batch)."""
    try:
        assigned = c.assignment()
        for tp in c.committed(assigned, timeout=30) if assigned else []:
            c.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))
    except KafkaException as exc:
        log.warning("%s: cannot rewind (%s); rejoining the group from the committed offsets", c, exc)
        return False
    return True


def records(batch: list[Message]) -> list[Message]:
    """The batch's records; consumer errors are logged and skipped, a fatal one raises."""
    out = []
    for msg in batch:
        error = msg.error()
        if error is None:
            out.append(msg)
        elif error.fatal():
            raise KafkaException(error)
        else:
            log.warning("consumer error %s", error)
    return out


def _listed(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"


class TransactionalStage:
    """Subclasses say what a batch produces (``transform``) and what to redo after an abort."""

    #: the stage's name: its group ``<app_id>-<name>``, its failpoint ``<name>.before_commit``
    name: ClassVar[str]

    def __init__(
        self, kafka: KafkaSettings, settings: StreamsSettings, stats: StreamStats, topics: list[str]
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.stats = stats
        self.topics = topics
        self.group = f"{settings.app_id}-{self.name}"
        self.committed_batches = 0
        self.transactional_id = f"{self.group}-{instance_id(settings)}"
        self.kafka_retry = Retrier(f"streams {self.name}", cap_s=10.0)
        self._trouble_at: float | None = None  # monotonic time of the last failed batch or transaction
        self._fence_forgiven = False  # a fence was taken as the producer's own since the last commit

    # -- what a stage does ---------------------------------------------------------
    def transform(self, p: TransactionalProducer, batch: list[Message]) -> Counter[str]:
        """Produce the batch's outputs inside the open transaction; returns the stats it adds once
        committed."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Before the loop starts (e.g. create the stage's own topics)."""

    def aborted(self) -> None:
        """The batch's transaction aborted: undo what ``transform`` changed in memory."""

    def assigned(self, partitions: list[TopicPartition]) -> None:
        """The group gave this worker ``partitions`` (before the first batch from them)."""

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """``partitions`` went to another worker (or this consumer closes)."""

    # -- the loop ------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Consume, transform, produce and commit until ``stop`` is set; raises WorkerFenced when
        another worker took this one's transactional id.

        Kafka errors (``infra.retry``): a retriable one (a coordinator loading or moving, a broker
        down) is ridden through for as long as it lasts, with capped backoff, logged and shown on
        the worker's /stats/ page (``kafka``). A fatal producer error (librdkafka: the instance must
        be replaced — e.g. INVALID_TXN_STATE when a transaction coordinator dies mid-commit) replaces
        the producer under the same id, which aborts the open batch, and resumes from the committed
        offsets; ``MAX_RESTARTS`` of those in a row without a committed batch stop the worker, as
        does any error that is neither (FatalKafkaError, naming it)."""
        self.prepare()
        self.kafka_retry.stop = stop
        restarts = 0
        while not stop.is_set():
            committed_before = self.committed_batches
            p: TransactionalProducer | None = None
            try:
                p = transactional_producer(
                    self.kafka, self.transactional_id, self.settings.transaction_timeout_s
                )
                log.info("%s: transactional id %s, group %s", self.name, self.transactional_id, self.group)
                self._consume(p, stop)
            except KafkaException as exc:
                err = kafka_error(exc)
                if self.committed_batches > committed_before:
                    restarts = 0
                self.aborted()
                self.stats.aborted_batches += 1
                if fenced(err if isinstance(err, KafkaError) else None, p):
                    if not self._forgive_fence(err):
                        raise _fenced_error(self.transactional_id) from exc
                    continue  # a new producer under the same id, from the committed offsets
                self._trouble_at = time.monotonic()
                try:
                    if isinstance(err, KafkaError) and err.fatal() and not is_retriable(err):
                        restarts += 1
                        if restarts > MAX_RESTARTS:
                            raise FatalKafkaError(
                                f"streams {self.name}: {restarts} producer replacements without a committed batch",
                                err,
                            ) from exc
                        log.error(
                            "%s: fatal producer error, replacing the producer (restart %d): %s",
                            self.name,
                            restarts,
                            err,
                        )
                        self.kafka_retry.stop.wait(min(10.0, restarts))
                    else:
                        self.kafka_retry.failed("transaction", exc)  # FatalKafkaError when not retriable
                except Stopped:
                    return
            else:
                self.kafka_retry.recovered("transaction")

    def _forgive_fence(self, err: Any) -> bool:
        """Whether a fence is taken as the producer's own doing (``SELF_FENCE_WINDOW_S``): only within
        that long of a failed batch or transaction, and once until a batch commits."""
        recent = self._trouble_at is not None and time.monotonic() - self._trouble_at < SELF_FENCE_WINDOW_S
        if not recent or self._fence_forgiven:
            return False
        self._fence_forgiven = True
        log.warning(
            "%s: fenced (%s) %.1f s after a failed batch or transaction: taken as this producer's own "
            "retry during a broker failover; replacing it under the same id (once until a batch commits)",
            self.name,
            err,
            time.monotonic() - (self._trouble_at or 0.0),
        )
        return True

    def _consume(self, p: TransactionalProducer, stop: threading.Event) -> None:
        while not stop.is_set():
            c = consumer(self.kafka, self.group, **self._consumer_conf())
            c.subscribe(
                self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
            )
            try:
                while not stop.is_set():
                    batch = c.consume(self.settings.batch_size, self.settings.batch_seconds)
                    if batch and not self._process(c, p, batch):
                        break  # could not rewind after an abort: a new consumer starts from the commits
            finally:
                c.close()
                self.revoked([])

    def _on_assign(self, _c: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("%s: assigned %s", self.name, _listed(partitions))
        self.assigned(partitions)

    def _on_revoke(self, _c: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("%s: revoked %s", self.name, _listed(partitions))
        self.revoked(partitions)

    def _consumer_conf(self) -> dict[str, Any]:
        # range: partition n of every input topic goes to the same worker (the join needs a request's
        # three events together; they are keyed alike on topics with the same partition count)
        conf: dict[str, Any] = {"isolation.level": "read_committed", "partition.assignment.strategy": "range"}
        if self.settings.session_timeout_s:  # the same failover time as the worker's faust group
            ms = int(self.settings.session_timeout_s * 1000)
            conf |= {"session.timeout.ms": ms, "heartbeat.interval.ms": max(1000, ms // 10)}
        return conf

    def _process(self, c: Consumer, p: TransactionalProducer, batch: list[Message]) -> bool:
        """One batch, one transaction; False when it aborted and the consumer could not rewind."""
        try:
            p.begin()
            counts = self.transform(p, batch)
            failpoint = f"{self.name}.before_commit"
            if failpoints.armed(failpoint):
                p.flush()  # the outputs reach the log inside the open transaction
                failpoints.reached(failpoint)
            # each step waits about a transaction's lifetime, not librdkafka's 60 s: a producer stuck on a
            # dead coordinator held stage 1 (and the windows) for minutes in the 3-broker test
            step_s = max(5.0, self.settings.transaction_timeout_s)
            p.commit(next_offsets(batch), c.consumer_group_metadata(), timeout_s=step_s)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if fenced(err, p):
                raise  # run() stops the worker, or replaces the producer once after trouble
            if err.fatal() or not err.txn_requires_abort():
                raise
            self._trouble_at = time.monotonic()
            log.warning("%s: batch of %d aborted, processing it again: %s", self.name, len(batch), err)
            p.abort(max(5.0, self.settings.transaction_timeout_s))
            self.aborted()
            self.stats.aborted_batches += 1
            return rewind(c)
        self.committed_batches += 1
        self._fence_forgiven = False
        self.kafka_retry.recovered("transaction")
        for stat, n in counts.items():
            setattr(self.stats, stat, getattr(self.stats, stat) + n)
        return True

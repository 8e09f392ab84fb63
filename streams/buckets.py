"""Stage 1 of the windows: events folded into base-width buckets, committed exactly once.

A confluent-kafka consume-transform-produce loop in its own consumer group
(``<app_id>-buckets``; one thread per worker, so N workers split the partitions): each batch of
InferenceCompleted / FeedbackSubmitted is folded into partial accumulators per
(model, version, bucket), and the partials, the batch's dead letters and the batch's input
offsets commit in one Kafka transaction. Stage 2 (the faust windows agent) reads the partials
``read_committed``, so after a kill -9 anywhere a batch is either wholly visible with its
offsets committed, or not at all and folded again by whoever owns the partitions next.

The transactional id is stable per worker (``RFTLOOP_STREAMS_INSTANCE_ID``, else host + data
dir): a restarted worker aborts the batch its predecessor left open at once; a worker that never
comes back has its open batch aborted by the broker after ``RFTLOOP_STREAMS_TRANSACTION_TIMEOUT_S``
(stage 2 waits for it meanwhile).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import socket
import threading
from collections import OrderedDict
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from infra import failpoints, rewards
from infra.dlq import send_to_dlq
from infra.kafka import TransactionalProducer, consumer, transactional_producer
from infra.serde import InvalidRecord, SerdeError, TopicSerde
from infra.settings import KafkaSettings, StreamsSettings
from streams.stats import StreamStats
from streams.windows import Accumulator

log = logging.getLogger(__name__)

Partials = dict[tuple[str, str, int], Accumulator]
_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


class WorkerFenced(RuntimeError):
    """Another worker started with this worker's transactional id and took over its batches."""


def check_completed(r: dict[str, Any]) -> None:
    """Absurd values are poison, not data: they would corrupt every window they touch."""
    for name in ("latency_ms", "ttft_ms", "tokens_per_s"):
        v = r[name]
        if v is not None and (not math.isfinite(v) or v < 0):
            raise InvalidRecord(f"{name}={v}: must be a finite number >= 0")
    if r["prompt_tokens"] < 0 or r["completion_tokens"] < 0 or r["cost"] < 0:
        raise InvalidRecord("token counts and cost must be >= 0")


class RecentIds:
    """Bounded memory of event ids already folded (drops duplicates that arrive close together).

    Ids of a batch whose transaction aborted are ``forget``-ten: the batch is folded again."""

    def __init__(self, size: int = 500_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def seen(self, event_id: str) -> bool:
        if event_id in self._ids:
            return True
        self._ids[event_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return False

    def forget(self, event_ids: list[str]) -> None:
        for event_id in event_ids:
            self._ids.pop(event_id, None)


def instance_id(settings: StreamsSettings) -> str:
    """This worker's stable identity across restarts (it names its transactional producer)."""
    if settings.instance_id:
        return settings.instance_id
    where = f"{socket.gethostname()}:{settings.data_dir.resolve()}"
    return hashlib.sha256(where.encode()).hexdigest()[:12]


class BucketStage:
    """Folds completed/feedback events into partials on ``partials_topic``, one transaction a batch."""

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: StreamsSettings,
        *,
        completed: TopicSerde,
        feedback: TopicSerde,
        partials_topic: str,
        bucket_s: int,
        stats: StreamStats,
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.completed_topic = completed.topic.name
        self.serdes = {completed.topic.name: completed, feedback.topic.name: feedback}
        self.partials_topic = partials_topic
        self.bucket_s = bucket_s
        self.stats = stats
        self.group = f"{settings.app_id}-buckets"
        self.transactional_id = f"{self.group}-{instance_id(settings)}"
        self.consumer_name = f"{settings.app_id}.metrics"
        self.recent = RecentIds()

    # -- the loop ------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Consume, fold, produce and commit until ``stop`` is set; raises on a fatal Kafka error
        (e.g. fenced by another worker with the same instance id)."""
        p = transactional_producer(
            self.kafka,
            self.transactional_id,
            self.settings.transaction_timeout_s,
            # faust's ticks for a key go to its partition by murmur2 (Java's hash): the partials must too
            partitioner="murmur2_random",
        )
        log.info("buckets: transactional id %s, group %s", self.transactional_id, self.group)
        while not stop.is_set():
            c = consumer(self.kafka, self.group, **self._consumer_conf())
            c.subscribe(list(self.serdes))
            try:
                while not stop.is_set():
                    batch = c.consume(self.settings.batch_size, self.settings.batch_seconds)
                    if batch and not self._process(c, p, batch):
                        break  # could not rewind after an abort: a new consumer starts from the commits
            finally:
                c.close()

    def _consumer_conf(self) -> dict[str, Any]:
        conf: dict[str, Any] = {"isolation.level": "read_committed"}
        if self.settings.session_timeout_s:  # the same failover time as the worker's faust group
            ms = int(self.settings.session_timeout_s * 1000)
            conf |= {"session.timeout.ms": ms, "heartbeat.interval.ms": max(1000, ms // 10)}
        return conf

    def _process(self, c: Consumer, p: TransactionalProducer, batch: list[Message]) -> bool:
        """One batch, one transaction; False when it aborted and the consumer could not rewind."""
        new_ids: list[str] = []
        try:
            p.begin()
            partials, folded = self.fold(p, batch, new_ids)
            for (model, version, t), acc in partials.items():
                value = {"m": model, "v": version, "b": t, "acc": acc.to_json()}
                p.produce(self.partials_topic, json.dumps(value).encode(), f"{model}|{version}".encode())
            if failpoints.armed("buckets.before_commit"):
                p.flush()  # the partials reach the log inside the open transaction
                failpoints.reached("buckets.before_commit")
            p.commit(_next_offsets(batch), c.consumer_group_metadata())
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.code() in _FENCED:
                raise WorkerFenced(
                    f"transactional id {self.transactional_id} was taken over by a newer worker: "
                    "give each worker its own RFTLOOP_STREAMS_INSTANCE_ID (or data dir)"
                ) from exc
            if err.fatal() or not err.txn_requires_abort():
                raise
            log.warning("buckets: batch of %d aborted, folding it again: %s", len(batch), err)
            p.abort()
            self.recent.forget(new_ids)
            self.stats.aborted_batches += 1
            return _rewind(c)
        self.stats.bucketed += folded
        self.stats.partials += len(partials)
        return True

    def fold(
        self, p: TransactionalProducer, batch: list[Message], new_ids: list[str]
    ) -> tuple[Partials, int]:
        """The batch's partial accumulators; poison goes to the DLQ in the same transaction."""
        width = self.bucket_s
        partials: Partials = {}
        folded = 0
        for msg in batch:
            error = msg.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                log.warning("buckets: consumer error %s", error)
                continue
            folded += 1
            topic = msg.topic() or ""
            is_completed = topic == self.completed_topic
            try:
                r = self.serdes[topic].decode(msg.value() or b"")
                if is_completed:
                    check_completed(r)
            except SerdeError as exc:
                self.stats.dead_letters += 1
                send_to_dlq(p, msg, exc, self.consumer_name)
                continue
            if self.recent.seen(r["event_id"]):
                self.stats.duplicates += 1
                continue
            new_ids.append(r["event_id"])
            t = int(r["occurred_at"].timestamp()) // width * width
            k = (r["model"], r["version"], t)
            acc = partials.get(k)
            if acc is None:
                acc = partials[k] = Accumulator()
            if is_completed:
                acc.add_completed(r)
            else:
                reward = rewards.reward_of(r["kind"], r["value"], r["scale_max"])
                acc.add_feedback(reward, r["kind"], r["value"], r["source"] == "user")
        return partials, folded


def _next_offsets(batch: list[Message]) -> list[TopicPartition]:
    """Per input partition, the offset after the last record of the batch (what to commit)."""
    last: dict[tuple[str, int], int] = {}
    for msg in batch:
        if not msg.error():
            last[(msg.topic() or "", msg.partition() or 0)] = msg.offset() or 0
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


def _rewind(c: Consumer) -> bool:
    """Back to the committed offsets of every assigned partition (after an aborted batch)."""
    try:
        assigned = c.assignment()
        for tp in c.committed(assigned, timeout=30) if assigned else []:
            c.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))
    except KafkaException as exc:
        log.warning("buckets: cannot rewind (%s); rejoining the group from the committed offsets", exc)
        return False
    return True

"""The join, exactly once: requests, responses and feedback by request_id into RewardedSamples.

A transactional consume-transform-produce loop (streams/transactional.py) in the consumer group
``<app_id>-join``, reading ``llm.inference.requested``, ``.completed`` and ``llm.feedback.submitted``
(keyed by request_id, same partition count; the range assignor gives partition n of all three to
one worker). Each request's ``JoinState`` (streams/join.py) lives in memory per input partition and
in a compacted changelog topic ``<app_id>-join-state`` (partition n holds the states of input
partition n). A batch's outputs — RewardedSamples, evaluation requests (to
``llm.evaluations.requested``, on the request's partition: the evaluate stage scores them outside
this transaction and its scores come back to this join on the feedback topic), dead letters — its
changed states and its input offsets commit in one Kafka transaction: after a kill -9 anywhere the
restarted owner restores the state of exactly the inputs whose offsets were committed, and nothing
is emitted twice.

A worker restores a partition's states from the changelog (``read_committed``) when the group
assigns it the partition, and after an aborted batch; states past the feedback horizon are deleted
with tombstones.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Collection

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition

from infra.dlq import send_to_dlq
from infra.kafka import TransactionalProducer, consumer, ensure_plain_topic, ensure_topics
from infra.serde import InvalidRecord, SerdeError, TopicSerde
from infra.settings import KafkaSettings, StreamsSettings
from schemas.events import FeedbackSubmitted, InferenceCompleted, InferenceRequested, RewardedSample
from streams.join import JoinState
from streams.stats import StreamStats
from streams.transactional import TransactionalStage, records

log = logging.getLogger(__name__)

RESTORE_TIMEOUT_S = 300.0


class RestoreFailed(RuntimeError):
    """The join's state could not be read back from its changelog topic."""


class JoinStage(TransactionalStage):
    name = "join"

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: StreamsSettings,
        *,
        requested: TopicSerde,
        completed: TopicSerde,
        feedback: TopicSerde,
        rewarded: TopicSerde,
        evaluations: TopicSerde,
        state_topic: str,
        evaluators: Collection[str],
        stats: StreamStats,
    ) -> None:
        inputs = [requested, completed, feedback]
        super().__init__(kafka, settings, stats, [s.topic.name for s in inputs])
        self.serdes = {s.topic.name: s for s in inputs}
        self.rewarded = rewarded
        self.evaluations = evaluations
        self.state_topic = state_topic
        self.evaluators = evaluators
        self.consumer_name = f"{settings.app_id}.join"
        self.states: dict[int, dict[str, JoinState]] = {}  # input partition -> request_id -> state
        self._sweep_at = 0.0

    def prepare(self) -> None:
        """The changelog (compacted, one record — the latest state — per request kept) and the
        evaluations topic (this stage's output, the evaluate stage's input)."""
        ensure_plain_topic(self.kafka, self.state_topic, self.kafka.partitions, {"cleanup.policy": "compact"})
        ensure_topics(self.kafka, only=[self.evaluations.topic])

    # -- partitions ------------------------------------------------------------------
    def assigned(self, partitions: list[TopicPartition]) -> None:
        new = sorted({tp.partition for tp in partitions} - set(self.states))
        if new:
            self.states.update(self.restore(new))

    def revoked(self, partitions: list[TopicPartition]) -> None:
        if not partitions:  # the consumer closes
            self.states.clear()
        for tp in partitions:
            self.states.pop(tp.partition, None)

    def aborted(self) -> None:
        """Memory holds the aborted batch's changes: read the committed states back."""
        if self.states:
            self.states.update(self.restore(sorted(self.states)))

    def restore(self, partitions: list[int]) -> dict[int, dict[str, JoinState]]:
        """The committed states of ``partitions``, read from the changelog to its end."""
        started = time.monotonic()
        out: dict[int, dict[str, JoinState]] = {n: {} for n in partitions}
        c = consumer(
            self.kafka,
            f"{self.group}-restore-{uuid.uuid4().hex[:8]}",  # assign() only: nothing is committed
            **{"isolation.level": "read_committed", "enable.partition.eof": True},
        )
        try:
            c.assign([TopicPartition(self.state_topic, n, OFFSET_BEGINNING) for n in partitions])
            pending, records_read = set(partitions), 0
            while pending:
                if time.monotonic() - started > RESTORE_TIMEOUT_S:
                    raise RestoreFailed(
                        f"{self.state_topic}: partitions {sorted(pending)} not read to the end in "
                        f"{RESTORE_TIMEOUT_S:.0f} s"
                    )
                for msg in c.consume(10_000, 0.5):
                    error = msg.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending.discard(msg.partition() or 0)
                        elif error.fatal():
                            raise KafkaException(error)
                        continue
                    records_read += 1
                    key = (msg.key() or b"").decode()
                    value = msg.value()
                    n = msg.partition() or 0
                    if value is None:
                        out[n].pop(key, None)
                    else:
                        out[n][key] = JoinState.from_json(json.loads(value))
        finally:
            c.close()
        log.info(
            "join: restored %d states of partitions %s from %d changelog records in %.1f s",
            sum(len(v) for v in out.values()),
            partitions,
            records_read,
            time.monotonic() - started,
        )
        return out

    # -- a batch -----------------------------------------------------------------------
    def transform(self, p: TransactionalProducer, batch: list[Message]) -> Counter[str]:
        counts: Counter[str] = Counter()
        now = time.time()
        horizon = self.settings.feedback_horizon_s
        changed: dict[str, int] = {}  # request_id -> partition
        for msg in records(batch):
            try:
                event = self.serdes[msg.topic() or ""].decode_event(msg.value())
                request_id = event.request_id  # type: ignore[attr-defined]
                if not request_id:
                    raise InvalidRecord(f"{type(event).__name__} without request_id cannot be joined")
            except SerdeError as exc:
                counts["dead_letters"] += 1
                send_to_dlq(p, msg, exc, self.consumer_name)
                continue
            assert isinstance(event, InferenceRequested | InferenceCompleted | FeedbackSubmitted)
            n = msg.partition() or 0
            states = self.states.setdefault(n, {})
            state = states.get(request_id)
            if state is None:
                state = states[request_id] = JoinState(partition=n, expires_at=0.0)
            for out in state.apply(event, self.evaluators, now, horizon):
                if isinstance(out, RewardedSample):
                    counts["samples"] += 1
                    p.produce(self.rewarded.topic.name, self.rewarded.encode_event(out), request_id)
                else:  # for the evaluate stage, on the request's partition (its scores come back here)
                    counts["evaluations"] += 1
                    topic = self.evaluations.topic.name
                    p.produce(topic, self.evaluations.encode_event(out), request_id, partition=n)
            changed[request_id] = n
            counts["joined"] += 1
        for request_id, n in changed.items():
            value = json.dumps(self.states[n][request_id].to_json()).encode()
            p.produce(self.state_topic, value, request_id, partition=n)
        if now >= self._sweep_at:
            self._sweep_at = now + min(60.0, horizon / 10)
            counts["expired"] += self._expire(p, now)
        return counts

    def _expire(self, p: TransactionalProducer, now: float) -> int:
        """Drop states past their horizon (tombstones in the changelog, in this batch's transaction)."""
        expired = 0
        for n, states in self.states.items():
            old = [request_id for request_id, s in states.items() if s.expires_at < now]
            for request_id in old:
                del states[request_id]
                p.produce(self.state_topic, None, request_id, partition=n)
            expired += len(old)
        return expired

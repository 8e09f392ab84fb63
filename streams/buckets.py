"""Stage 1 of the windows: events folded into base-width buckets, committed exactly once.

A transactional consume-transform-produce loop (streams/transactional.py) in its own consumer
group ``<app_id>-buckets``: each batch of InferenceCompleted / FeedbackSubmitted is folded into
partial accumulators per (model, version, bucket), and the partials, the batch's dead letters and
its input offsets commit in one Kafka transaction. Stage 2 (the faust windows agent) reads the
partials ``read_committed``, so after a kill -9 anywhere a batch is either wholly visible with its
offsets committed, or not at all and folded again by whoever owns the partitions next (stage 2
waits meanwhile for a dead worker's open batch: see RFTLOOP_STREAMS_TRANSACTION_TIMEOUT_S).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, OrderedDict
from typing import Any

from confluent_kafka import Message

from infra import rewards
from infra.dlq import send_to_dlq
from infra.kafka import TransactionalProducer
from infra.serde import InvalidRecord, SerdeError, TopicSerde
from infra.settings import KafkaSettings, StreamsSettings
from streams.stats import StreamStats
from streams.transactional import TransactionalStage, records
from streams.windows import Accumulator

# Fields stage 1 reads in their Avro form: the event id as its string (the dedupe key) and
# occurred_at as milliseconds (its bucket). No UUID or datetime object is built per record.
PLAIN = frozenset({"event_id", "occurred_at"})

log = logging.getLogger(__name__)

Partials = dict[tuple[str, str, int], Accumulator]


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


class BucketStage(TransactionalStage):
    """Folds completed/feedback events into partials on ``partials_topic``, one transaction a batch."""

    name = "buckets"

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
        super().__init__(kafka, settings, stats, [completed.topic.name, feedback.topic.name])
        self.completed_topic = completed.topic.name
        self.serdes = {completed.topic.name: completed, feedback.topic.name: feedback}
        self.partials_topic = partials_topic
        self.bucket_s = bucket_s
        self.consumer_name = f"{settings.app_id}.metrics"
        self.recent = RecentIds()
        self._new_ids: list[str] = []

    def transform(self, p: TransactionalProducer, batch: list[Message]) -> Counter[str]:
        self._new_ids = []
        partials, counts = self.fold(p, batch, self._new_ids)
        for (model, version, t), acc in partials.items():
            value = {"m": model, "v": version, "b": t, "acc": acc.to_json()}
            p.produce(self.partials_topic, json.dumps(value).encode(), f"{model}|{version}".encode())
        counts["partials"] += len(partials)
        return counts

    def aborted(self) -> None:
        self.recent.forget(self._new_ids)  # the batch is folded again

    def fold(
        self, p: TransactionalProducer, batch: list[Message], new_ids: list[str]
    ) -> tuple[Partials, Counter[str]]:
        """The batch's partial accumulators; poison goes to the DLQ in the same transaction."""
        width = self.bucket_s
        partials: Partials = {}
        counts: Counter[str] = Counter()
        for msg in records(batch):
            counts["bucketed"] += 1
            topic = msg.topic() or ""
            is_completed = topic == self.completed_topic
            try:
                r = self.serdes[topic].decode(msg.value() or b"", plain=PLAIN)
                if is_completed:
                    check_completed(r)
            except SerdeError as exc:
                counts["dead_letters"] += 1
                send_to_dlq(p, msg, exc, self.consumer_name)
                continue
            if self.recent.seen(r["event_id"]):
                counts["duplicates"] += 1
                continue
            new_ids.append(r["event_id"])
            t = r["occurred_at"] // 1000 // width * width  # milliseconds since the epoch (PLAIN)
            k = (r["model"], r["version"], t)
            acc = partials.get(k)
            if acc is None:
                acc = partials[k] = Accumulator()
            if is_completed:
                acc.add_completed(r)
            else:
                if r["source"] != "user" and r.get("choice", 0):
                    # an evaluator scores every choice of an n > 1 response; the judge's unit is the
                    # request, so its live quality takes choice 0's score (n = 1's only choice)
                    counts["other_choices"] += 1
                    continue
                if r["source"] == "user":
                    # the judge's unit is the request: a user's second vote on one request (a changed
                    # mind, a double click) is not a second rated response
                    vote = f"vote|{r['kind']}|{r['request_id']}"
                    if self.recent.seen(vote):
                        counts["repeat_votes"] += 1
                        continue
                    new_ids.append(vote)
                reward = rewards.reward_of(r["kind"], r["value"], r["scale_max"])
                acc.add_feedback(reward, r["kind"], r["value"], r["source"] == "user")
        return partials, counts

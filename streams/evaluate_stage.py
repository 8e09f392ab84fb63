"""The evaluate stage, exactly once: EvaluationRequested into evaluator scores on the feedback topic.

A transactional consume-transform-produce loop (streams/transactional.py) in the consumer group
``<app_id>-evaluate``, reading ``llm.evaluations.requested`` (the join's output). Scoring runs in
the evaluators' own process under a deadline per response (streams/evaluator_sandbox.py), so a
slow or hanging evaluator — a user's module, a pattern that backtracks — delays scores, never the
join's batches, and cannot freeze the worker. A batch's scores (FeedbackSubmitted, source
evaluator, on the request's partition: the join reads them back), its dead letters and its input
offsets commit in one Kafka transaction; a replay scores again and publishes the same event ids.

A response whose evaluators did not all answer in time goes to ``llm.evaluations.requested.dlq``
(headers name the evaluators and the deadline); the scores of the evaluators that did answer are
still published. A record that does not decode goes there too.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from confluent_kafka import Message

from infra.dlq import send_to_dlq
from infra.kafka import TransactionalProducer, ensure_topics
from infra.serde import SerdeError, TopicSerde
from infra.settings import KafkaSettings, StreamsSettings
from schemas.events import EvaluationRequested
from streams import evaluate
from streams.evaluator_sandbox import EvaluatorSandbox
from streams.stats import StreamStats
from streams.transactional import TransactionalStage, records

log = logging.getLogger(__name__)


class EvaluatorTimeout(RuntimeError):
    """Evaluators that did not score a response within ``RFTLOOP_STREAMS_EVALUATOR_TIMEOUT_S``."""


class EvaluateStage(TransactionalStage):
    name = "evaluate"

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: StreamsSettings,
        *,
        evaluations: TopicSerde,
        feedback: TopicSerde,
        sandbox: EvaluatorSandbox,
        stats: StreamStats,
    ) -> None:
        super().__init__(kafka, settings, stats, [evaluations.topic.name])
        self.evaluations = evaluations
        self.feedback = feedback
        self.sandbox = sandbox
        self.consumer_name = f"{settings.app_id}.evaluate"

    def prepare(self) -> None:
        """The input topic (the join may not have made it yet), then the evaluators' process (a
        module that fails stops the worker here, naming it)."""
        ensure_topics(self.kafka, only=[self.evaluations.topic])
        if not self.sandbox.started:
            self.sandbox.start()

    def run(self, stop: threading.Event) -> None:
        try:
            super().run(stop)
        finally:
            self.sandbox.close()

    def transform(self, p: TransactionalProducer, batch: list[Message]) -> Counter[str]:
        # Score the whole batch before the first produce: the broker's transaction timer starts with
        # the transaction's first partition, so time spent on evaluators that hang (their deadline and
        # the process's restart, twice per such response) cannot run the transaction out and make the
        # batch abort and hang again on every retry.
        counts: Counter[str] = Counter()
        todo: list[tuple[Message, EvaluationRequested]] = []
        poison: list[tuple[Message, SerdeError]] = []
        for msg in records(batch):
            try:
                event = self.evaluations.decode_event(msg.value())
                assert isinstance(event, EvaluationRequested)
            except SerdeError as exc:
                poison.append((msg, exc))
                continue
            todo.append((msg, event))
        items = [item for _, req in todo for item in evaluate.inputs(req)]
        outcomes = iter(self.sandbox.run(items))
        for msg, error in poison:
            counts["dead_letters"] += 1
            send_to_dlq(p, msg, error, self.consumer_name)
        for msg, req in todo:
            mine = [next(outcomes) for _ in req.choices]
            request_id = req.request_id or ""
            for score in evaluate.score_events(req, [o.scores for o in mine]):
                counts["evaluator_scores"] += 1
                value = self.feedback.encode_event(score)
                p.produce(self.feedback.topic.name, value, request_id, partition=msg.partition() or 0)
            late = sorted({name for o in mine for name in o.timed_out})
            if late:
                counts["evaluator_timeouts"] += 1
                counts["dead_letters"] += 1
                late_error = EvaluatorTimeout(
                    f"evaluator(s) {', '.join(late)} did not score request {request_id} within "
                    f"{self.sandbox.timeout_s:g} s; the others' scores were published"
                )
                send_to_dlq(p, msg, late_error, self.consumer_name)
        return counts

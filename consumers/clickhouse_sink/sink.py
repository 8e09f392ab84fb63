"""Kafka → ClickHouse sink for every event topic.

Delivery guarantee: at-least-once into ReplacingMergeTree tables keyed on
``event_id``, so replays collapse (read with FINAL). Offsets are committed only
after every buffered row of the batch is inserted. Batches are bounded by size
and time. While ClickHouse is down the sink pauses its partitions, retries the
same batch with backoff, and resumes without loss. Undecodable records go to
``<topic>.dlq`` (never dropped, never a crash).

Kafka errors (``infra.retry``): a retriable commit failure (a coordinator that moved answers
COORDINATOR_LOAD_IN_PROGRESS for as long as it loads) is retried with capped backoff until it
succeeds or the sink is stopped, rather than left to the next batch's commit: a sink that goes idle
after the failure would otherwise keep the offsets uncommitted. Stopped in the middle, the batch's
offsets stay uncommitted and its rows are read again and collapse by ``event_id``. Dead letters
never expire in the producer (``delivery.timeout.ms`` 0), so a batch is committed only once its
poison records are on ``<topic>.dlq``. A fatal error (authorization, unknown topic) stops the sink
with a FatalKafkaError that names it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from infra.clickhouse.client import connect
from infra.clickhouse.migrate import migrate
from infra.clickhouse.tables import EventTable, event_table
from infra.dlq import send_to_dlq
from infra.kafka import consumer, producer
from infra.retry import Retrier, Stopped
from infra.serde import SerdeError, TopicSerde
from infra.settings import ClickHouseSettings, KafkaSettings
from schemas.topics import ALL_TOPICS, TopicSpec

log = logging.getLogger(__name__)
NAME = "clickhouse-sink"


# The group moved on (a rebalance, or this member was dropped): the partitions' new owner re-reads
# from the last commit and the rows collapse by event_id, so the commit is given up, not retried.
_GROUP_MOVED = {
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError._NO_OFFSET,  # nothing of the batch is still assigned
}


def _commit(c: Any) -> None:
    try:
        c.commit(asynchronous=False)
    except KafkaException as exc:
        if exc.args[0].code() not in _GROUP_MOVED:
            raise
        log.warning("sink: commit skipped (%s); the next owner re-reads those rows", exc.args[0].name())


def _listed(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"


@dataclass
class SinkStats:
    consumed: int = 0
    inserted: int = 0
    committed: int = 0  # records whose offsets are committed (rows in, dead letters delivered)
    dead_lettered: int = 0
    batches: int = 0
    insert_failures: int = 0
    first_message_at: float | None = None  # time.monotonic() of the first record consumed
    per_table: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class ClickHouseSink:
    def __init__(
        self,
        kafka: KafkaSettings,
        clickhouse: ClickHouseSettings,
        registry: SchemaRegistryClient,
        *,
        topics: list[TopicSpec] | None = None,
        group_id: str = "rftloop-clickhouse-sink",
        batch_size: int = 20_000,
        batch_seconds: float = 1.0,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.topics = topics or list(ALL_TOPICS)
        self._kafka = kafka
        self._ch_settings = clickhouse
        self._tables: dict[str, EventTable] = {t.name: event_table(t) for t in self.topics}
        self._serdes = {t.name: TopicSerde(registry, t) for t in self.topics}
        self._group_id = group_id
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.max_backoff_s = max_backoff_s
        self.stats = SinkStats()
        self._stop = threading.Event()
        self._client: Any = None
        self.kafka_retry = Retrier(NAME, self._stop)

    def stop(self) -> None:
        self._stop.set()

    def _ch(self) -> Any:
        if self._client is None:
            self._client = connect(self._ch_settings, database=self._ch_settings.database)
        return self._client

    def run(self, max_seconds: float | None = None) -> SinkStats:
        """Consume until ``stop()`` (or ``max_seconds``); commit after each inserted batch."""
        migrate(
            connect(self._ch_settings, database="default"),
            self._ch_settings.database,
            self._ch_settings.cluster,
            ttls=self._ch_settings.ttl_days,  # tables keep rows as long as their topics keep events
        )
        c = consumer(self._kafka, self._group_id, **{"max.poll.interval.ms": 600_000})
        dlq = producer(self._kafka, **{"delivery.timeout.ms": 0})  # 0: retried until delivered
        buffers: dict[str, list[list[Any]]] = defaultdict(list)  # topic -> rows
        pending: list[Message] = []

        def flush() -> None:
            if not pending:
                return
            self._insert_with_backoff(c, buffers)
            while dlq.flush(5):
                log.warning("sink: %d dead letter(s) still undelivered; not committing yet", len(dlq))
                if self._stop.is_set():
                    raise RuntimeError("stopped with dead letters undelivered; batch not committed")
            try:
                self.kafka_retry.call("offset commit", lambda: _commit(c))
                self.stats.committed += len(pending)
            except Stopped:
                log.warning(
                    "sink: stopped before the commit went through; the batch will be re-read (deduplicated)"
                )
            self.stats.batches += 1
            buffers.clear()
            pending.clear()

        def on_revoke(consumer_: Any, partitions: list[TopicPartition]) -> None:
            flush()  # commit what we hold before the partitions move

        def on_assign(consumer_: Any, partitions: list[TopicPartition]) -> None:
            log.info("sink: assigned %d partition(s): %s", len(partitions), _listed(partitions))

        c.subscribe([t.name for t in self.topics], on_assign=on_assign, on_revoke=on_revoke)
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        batch_started = time.monotonic()
        try:
            while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
                msgs = c.consume(num_messages=min(5_000, self.batch_size), timeout=0.2)
                for msg in msgs:
                    if msg.error():
                        log.warning("consume error: %s", msg.error())
                        continue
                    self.stats.consumed += 1
                    if self.stats.first_message_at is None:
                        self.stats.first_message_at = time.monotonic()
                    pending.append(msg)
                    topic = msg.topic() or ""
                    try:
                        record = self._serdes[topic].decode(msg.value())
                    except SerdeError as exc:
                        send_to_dlq(dlq, msg, exc, NAME)
                        self.stats.dead_lettered += 1
                        continue
                    table = self._tables[topic]
                    buffers[topic].append(table.row(record, msg.partition() or 0, msg.offset() or 0))
                full = len(pending) >= self.batch_size
                if pending and (full or time.monotonic() - batch_started >= self.batch_seconds):
                    flush()
                    batch_started = time.monotonic()
                elif not pending:
                    batch_started = time.monotonic()
            flush()
        finally:
            c.close()
        return self.stats

    def _insert_with_backoff(self, c: Any, buffers: dict[str, list[list[Any]]]) -> None:
        backoff = 0.2
        paused: list[TopicPartition] = []
        done: set[str] = set()
        while True:
            try:
                for topic, rows in buffers.items():
                    table = self._tables[topic]
                    name = table.name
                    if name in done or not rows:
                        continue
                    self._ch().insert(table.name, rows, column_names=table.column_names)
                    done.add(name)  # a retry never re-inserts a table that made it
                    self.stats.inserted += len(rows)
                    self.stats.per_table[name] += len(rows)
                if paused:
                    c.resume(paused)
                    log.info("ClickHouse is back; resumed %d partition(s)", len(paused))
                return
            except Exception as exc:  # any ClickHouse / network error: keep the batch, back off
                self.stats.insert_failures += 1
                self._client = None
                if not paused:
                    paused = c.assignment()
                    c.pause(paused)
                log.warning(
                    "insert failed (%s: %s); retrying in %.1fs with partitions paused",
                    type(exc).__name__,
                    exc,
                    backoff,
                )
                if self._stop.wait(backoff):
                    raise RuntimeError(
                        "stopped while ClickHouse was unavailable; batch not committed"
                    ) from exc
                backoff = min(backoff * 2, self.max_backoff_s)
                c.poll(0)  # keep group membership alive while paused

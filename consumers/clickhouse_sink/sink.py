"""Kafka → ClickHouse sink for every event topic.

Delivery guarantee: at-least-once into ReplacingMergeTree tables keyed on ``event_id``, so replays
collapse (read with FINAL). Offsets are committed only after every buffered row of the batch is
inserted; the commit is sent without waiting for its answer, and waited for before a rebalance or
a stop (``commits``). Batches are bounded by size (``batch_size`` records at most) and time. While
ClickHouse is down the sink pauses its partitions, retries the same batch with backoff, and resumes
without loss. Undecodable records go to ``<topic>.dlq`` (never dropped, never a crash).

Decoding. With ``avro_registry_url`` (the CLI's default: the registry as ClickHouse reaches it),
ClickHouse decodes the records itself: the framed bytes of one partition's batch go as one
``INSERT ... SELECT ... FROM input(...) FORMAT AvroConfluent`` (``EventTable.avro_insert_target``), which
also sets ``_topic``/``_partition`` and each row's ``_offset``. Only records written with the
topic's current schema go that way; others (an older writer schema) and anything not framed are
decoded here by ``TopicSerde``, as every record is without the URL. When ClickHouse refuses a batch
(a corrupt body, the registry out of its reach), that batch is decoded here instead, so poison
still reaches ``<topic>.dlq`` with its headers and the good rows still land.

Not pipelined. Reading the next batch while a flusher thread inserts the last was tried and
measured in one run, alternating, 8 rounds each with ``rftloop bench sink.rows_per_s``'s setup:
median 74.5 k rows/s against 74.3 k for this loop. ClickHouse's inserts take ~190 of the ~210-250 ms
for those 20,000 records and keep both cores busy, so reading ~15 ms of a batch alongside only
competes with them. At 20,000-record batches (then the default) it is alike: a timeline of 3 batches
showed ~27 ms reading each and 150-220 ms inserting it, the machine's 2 cores 1.75 busy over the
run (ClickHouse alone, the same inserts with no Kafka: 1.7-1.9 busy). Tried again once the parts
were compact (migration 0008: ClickHouse's share of the CPU fell from ~14 to ~12 µs a row), the next
batch read on the consuming thread while the pool inserted the last, ends taken at each batch's
close: median 112.9 k rows/s against 113.8 k for this loop, 6 alternating rounds each of 3 batches
of 20,000. The machine's 2 cores are the limit (~18 CPU-µs a row in all, ClickHouse, Kafka and both
Python sides together), so reading alongside only takes CPU from the inserts. And with the synchronous
commit made on the flusher thread, the outage test's last batch was inserted but not committed
within 60 s, in each of 3 runs (the cause not found; synchronous commits that hang are reported in
confluent-kafka-python#1801), so the commit would have to stay on the consuming thread.

Kafka errors (``infra.retry``): a retriable commit failure (a coordinator that moved answers
COORDINATOR_LOAD_IN_PROGRESS for as long as it loads) is retried synchronously, with capped backoff,
until it succeeds or the sink is stopped, rather than left to the next batch's commit: a sink that
goes idle after the failure would otherwise keep the offsets uncommitted. Stopped in the middle,
the batch's offsets stay uncommitted and its rows are read again and collapse by ``event_id``. Dead
letters never expire in the producer (``delivery.timeout.ms`` 0), so a batch is committed only once
its poison records are on ``<topic>.dlq``. A fatal error (authorization, unknown topic) stops the
sink with a FatalKafkaError that names it.
"""

from __future__ import annotations

import gc
import itertools
import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from confluent_kafka import Message, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from consumers.clickhouse_sink.commits import OffsetCommits
from infra.clickhouse.client import body_pieces, connect
from infra.clickhouse.migrate import migrate
from infra.clickhouse.tables import AVRO_FORMAT, EventTable, event_table, offset_runs
from infra.dlq import send_to_dlq
from infra.kafka import consumer, producer
from infra.retry import Retrier, Stopped
from infra.serde import SerdeError, TopicSerde
from infra.settings import ClickHouseSettings, KafkaSettings
from schemas.topics import STORED_TOPICS, TopicSpec

log = logging.getLogger(__name__)
NAME = "clickhouse-sink"
# Every insert skips ReplacingMergeTree's collapse of the inserted block (optimize_on_insert): it
# collapses only duplicates within one batch, which every reader's FINAL (and the merges) collapse
# anyway, and it copies the whole block again: ~10 of ~45 ms per 10,000 completions here.
INSERT_SETTINGS = {"optimize_on_insert": 0}
# one thread and no parallel parsing: a row's number is its record's position in the body
_AVRO_SETTINGS = {**INSERT_SETTINGS, "max_threads": 1, "input_format_parallel_parsing": 0}
_INSERT_THREADS = 4  # a batch's partitions are inserted side by side by this many threads
_MAX_RUNS = 500  # a batch whose offsets break into more runs than this is decoded here
# Records in a batch at most (``batch_seconds`` bounds it in time). Bigger batches make fewer, bigger
# parts: less work per row at insert and fewer merges. Measured with chdb 26.9, the sink as
# `rftloop bench sink.rows_per_s` runs it over 120,000 records, alternating rounds (median, rounds):
# batches of 20,000 112.7 k rows/s (105-124 k), 40,000 129.2 k (123-135 k). Before the consumer's
# fetch backoff was shortened (``FETCH_QUEUE_BACKOFF_MS``): 66.0 k against 78.6 k, and in a
# second run 66.8 k (20,000), 75.7 k (40,000), 71.4 k (60,000). A batch of 40,000 completions is
# ~55 MB held in the sink.
DEFAULT_BATCH = 40_000
# librdkafka stops fetching a partition whose local queue is over its thresholds (queued.min.messages,
# queued.max.messages.kbytes) and looks again only after fetch.queue.backoff.ms: 1,000 ms by default.
# The sink takes a big batch and then inserts it, leaving the queue full meanwhile, so its next batch
# stalled: in a probe of `rftloop bench sink.rows_per_s`'s setup (120,000 records, batches of 40,000),
# consume() returned 4,204 records and then nothing for ~600 ms, with the rest waiting on the broker.
# Looking again after 20 ms took the sink from 76.7 k to 127.7 k rows/s (the look is a local check).
FETCH_QUEUE_BACKOFF_MS = 20


def _listed(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"


@dataclass
class SinkStats:
    consumed: int = 0
    inserted: int = 0
    committed: int = 0  # records whose offsets are committed (rows in, dead letters delivered)
    dead_lettered: int = 0
    decoded_by_clickhouse: int = 0  # rows ClickHouse decoded from the framed bytes (AvroConfluent)
    decode_fallbacks: int = 0  # batches ClickHouse refused, decoded here instead
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
        batch_size: int = DEFAULT_BATCH,
        batch_seconds: float = 1.0,
        max_backoff_s: float = 10.0,
        avro_registry_url: str | None = None,
    ) -> None:
        self.topics = topics or list(STORED_TOPICS)
        self._kafka = kafka
        self._ch_settings = clickhouse
        self._tables: dict[str, EventTable] = {t.name: event_table(t) for t in self.topics}
        self._serdes = {t.name: TopicSerde(registry, t) for t in self.topics}
        self.avro_registry_url = avro_registry_url  # None: every record is decoded here
        self._local_ids: dict[str, int] = {}  # topic -> registry id of its current schema
        self._headers: dict[str, bytes] = {}  # topic -> the Confluent frame ClickHouse decodes (magic, id)
        self._id_retry_at: dict[str, float] = {}
        self._group_id = group_id
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.max_backoff_s = max_backoff_s
        self.stats = SinkStats()
        self._stop = threading.Event()
        self._client: Any = None  # None: every thread makes a new client (after a failure)
        self._clients = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=_INSERT_THREADS, thread_name_prefix="sink-insert")
        self.kafka_retry = Retrier(NAME, self._stop)

    def stop(self) -> None:
        self._stop.set()

    def _ch(self) -> Any:
        """This thread's client (the pool's threads insert side by side); dropped after a failure."""
        client = getattr(self._clients, "client", None)
        if client is None or self._client is None:
            client = self._clients.client = connect(self._ch_settings, database=self._ch_settings.database)
            self._client = client
        return client

    def run(self, max_seconds: float | None = None) -> SinkStats:
        """Consume until ``stop()`` (or ``max_seconds``); commit after each inserted batch."""
        migrate(
            connect(self._ch_settings, database="default"),
            self._ch_settings.database,
            self._ch_settings.cluster,
            ttls=self._ch_settings.ttl_days,  # tables keep rows as long as their topics keep events
        )
        self._connect_pool()
        # Start-up is done: take what the process holds now (modules, clients, schemas, a host's own
        # data) out of the cyclic collector's sight. Its full collections walked all of it: pauses of
        # 110-137 ms in `rftloop bench sink.rows_per_s`, each stalling the batch in flight (a round at
        # 73 k rows/s, the others at 105-119 k). From here they walk only what the loop makes.
        gc.collect()
        gc.freeze()
        commits = OffsetCommits(self._confirmed)
        c = consumer(
            self._kafka,
            self._group_id,
            **{
                "max.poll.interval.ms": 600_000,
                "on_commit": commits.on_commit,
                "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
            },
        )
        dlq = producer(self._kafka, **{"delivery.timeout.ms": 0})  # 0: retried until delivered
        buffers: dict[str, list[list[Any]]] = defaultdict(list)  # topic -> rows
        framed: dict[tuple[str, int], list[Message]] = defaultdict(list)  # for ClickHouse to decode
        pending: list[Message] = []

        def commit_sync() -> None:
            try:
                self.kafka_retry.call("offset commit", lambda: commits.commit_sync(c))
            except Stopped:
                log.warning(
                    "sink: stopped before the commit went through; the batch will be re-read (deduplicated)"
                )

        def flush(sync: bool = False) -> None:
            """Insert the batch, then commit it: sent without waiting, or waited for (``sync``)."""
            if pending:
                self._insert_with_backoff(c, buffers, framed, dlq)
                while dlq.flush(5):
                    log.warning("sink: %d dead letter(s) still undelivered; not committing yet", len(dlq))
                    if self._stop.is_set():
                        raise RuntimeError("stopped with dead letters undelivered; batch not committed")
                commits.batch_in(c, len(pending))
                self.stats.batches += 1
                buffers.clear()
                framed.clear()
                pending.clear()
                if not sync:
                    commits.send(c, commit_sync)
            if sync or commits.retry_needed:
                commit_sync()

        def on_revoke(consumer_: Any, partitions: list[TopicPartition]) -> None:
            flush(sync=True)  # in and committed before the partitions move
            commits.revoked(partitions)

        def on_assign(consumer_: Any, partitions: list[TopicPartition]) -> None:
            log.info("sink: assigned %d partition(s): %s", len(partitions), _listed(partitions))

        c.subscribe([t.name for t in self.topics], on_assign=on_assign, on_revoke=on_revoke)
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        batch_started = time.monotonic()
        try:
            while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
                # never past batch_size: a batch that overshot it left the rest of the input short of a
                # full batch, waiting out batch_seconds (1.26 s instead of 0.2 s for 20,000 records
                # in a round of `rftloop bench sink.rows_per_s`)
                room = max(1, self.batch_size - len(pending))
                msgs = c.consume(num_messages=min(5_000, room), timeout=0.2)
                if msgs and self.stats.first_message_at is None:
                    self.stats.first_message_at = time.monotonic()
                headers = self._headers  # per record below: keep the loop lean (~1 µs a record)
                for msg in msgs:
                    if msg.error():
                        log.warning("consume error: %s", msg.error())
                        self.stats.consumed -= 1
                        continue
                    pending.append(msg)
                    topic, value = msg.topic() or "", msg.value()
                    header = headers.get(topic)
                    if (header is not None and value is not None and value.startswith(header)) or (
                        header is None and self._clickhouse_decodes(topic, value)
                    ):
                        framed[(topic, msg.partition() or 0)].append(msg)
                    else:
                        self._decode(msg, buffers, dlq)
                self.stats.consumed += len(msgs)
                full = len(pending) >= self.batch_size
                if pending and (full or time.monotonic() - batch_started >= self.batch_seconds):
                    flush()
                    batch_started = time.monotonic()
                elif not pending:
                    batch_started = time.monotonic()
                if commits.retry_needed:  # an asynchronous commit failed (told inside consume)
                    commit_sync()
            flush(sync=True)
        finally:
            c.close()
        return self.stats

    def _confirmed(self, records: int) -> None:
        self.stats.committed += records

    def _connect_pool(self) -> None:
        """Give each insert thread its client now, at start-up: a client's first connection asks the
        server for its version and settings (tens of ms), which the first batch would otherwise wait for."""
        ready = threading.Barrier(_INSERT_THREADS)

        def connect_one(_: int) -> None:
            try:
                self._ch()
            finally:
                ready.wait(30)  # each task holds its thread until all have one: every thread gets a client

        try:
            list(self._pool.map(connect_one, range(_INSERT_THREADS)))
        except Exception as exc:  # ClickHouse not up yet: the clients are made on first use, with backoff
            log.warning(
                "sink: could not connect the insert threads at start-up (%s); connecting on first insert", exc
            )

    def _clickhouse_decodes(self, topic: str, value: bytes | None) -> bool:
        """Whether ClickHouse decodes this record: a URL is set, the table allows it, and the
        record is framed with the topic's current schema id (the registry looked up once)."""
        if self.avro_registry_url is None or not self._tables[topic].clickhouse_decodes:
            return False
        if value is None or len(value) < 5 or value[0] != 0:
            return False  # not framed: decoded here, which names the fault for the DLQ
        local = self._local_ids.get(topic)
        if local is None:
            if time.monotonic() < self._id_retry_at.get(topic, 0.0):
                return False
            try:
                local = self._local_ids[topic] = self._serdes[topic].schema_id
                self._headers[topic] = b"\x00" + local.to_bytes(4, "big")
            except Exception as exc:  # the registry not answering: decode here, as before
                self._id_retry_at[topic] = time.monotonic() + 10
                log.warning("sink: schema id of %s not known (%s); decoding its records here", topic, exc)
                return False
        return int.from_bytes(value[1:5], "big") == local

    def _decode(self, msg: Message, buffers: dict[str, list[list[Any]]], dlq: Any) -> None:
        """Decode one record here into its table's rows, or send it to the DLQ."""
        topic = msg.topic() or ""
        try:
            record = self._serdes[topic].decode(msg.value())
        except SerdeError as exc:
            send_to_dlq(dlq, msg, exc, NAME)
            self.stats.dead_lettered += 1
            return
        buffers[topic].append(self._tables[topic].row(record, msg.partition() or 0, msg.offset() or 0))

    def _send_framed(self, topic: str, partition: int, msgs: list[Message]) -> Exception | None:
        """Have ClickHouse decode and insert one partition's framed records (run by the pool's
        threads, side by side: the inserts of a batch's partitions overlap). None when they are in;
        the error otherwise: a DatabaseError when ClickHouse refused them for what they hold (or the
        offsets cannot be expressed), an OperationalError when it could not be reached."""
        table = self._tables[topic]
        offsets = [m.offset() or 0 for m in msgs]
        ascending = all(a < b for a, b in itertools.pairwise(offsets))  # a consumer's order, always
        if not ascending or len(offset_runs(offsets)[0]) > _MAX_RUNS:
            return DatabaseError(f"{len(offset_runs(offsets)[0])} runs of offsets, or not ascending")
        target = table.avro_insert_target(self._ch_settings.database, partition, offsets)
        settings = {**_AVRO_SETTINGS, "format_avro_schema_registry_url": self.avro_registry_url}
        body = body_pieces(m.value() or b"" for m in msgs)
        try:
            # raw_insert, not command(data=...): command() decodes the whole body as text and scans it
            # for its read-only check (~45 ms per 15 MB here). A generator body keeps the statement in
            # the URL and streams the bytes as they are, piece by piece (``body_pieces``).
            self._ch().raw_insert(target, None, body, settings=settings, fmt=AVRO_FORMAT)
        except DatabaseError as exc:  # OperationalError included
            return exc
        return None

    def _insert_framed(
        self,
        framed: dict[tuple[str, int], list[Message]],
        buffers: dict[str, list[list[Any]]],
        dlq: Any,
    ) -> None:
        """Every partition's framed records in (each removed from ``framed`` once in, so a retry
        never sends it twice); what ClickHouse refused is decoded here into ``buffers`` (poison to
        the DLQ). An OperationalError propagates once the others are done: the caller backs off."""
        groups = list(framed.items())

        def send(group: tuple[tuple[str, int], list[Message]]) -> Exception | None:
            (topic, partition), msgs = group
            return self._send_framed(topic, partition, msgs)

        errors = [send(groups[0])] if len(groups) == 1 else list(self._pool.map(send, groups))
        unreachable: Exception | None = None
        for ((topic, partition), msgs), err in zip(groups, errors, strict=True):
            if isinstance(err, OperationalError):
                unreachable = err
                continue
            del framed[(topic, partition)]
            if err is None:
                name = self._tables[topic].name
                self.stats.decoded_by_clickhouse += len(msgs)
                self.stats.inserted += len(msgs)
                self.stats.per_table[name] += len(msgs)
                continue
            log.warning(
                "sink: ClickHouse refused %d framed record(s) of %s[%d] (%s); decoding them here",
                len(msgs),
                topic,
                partition,
                str(err).splitlines()[0][:300],
            )
            self.stats.decode_fallbacks += 1
            for m in msgs:
                self._decode(m, buffers, dlq)
        if unreachable is not None:
            raise unreachable

    def _insert_with_backoff(
        self,
        c: Any,
        buffers: dict[str, list[list[Any]]],
        framed: dict[tuple[str, int], list[Message]] | None = None,
        dlq: Any = None,
    ) -> None:
        backoff = 0.2
        paused: list[TopicPartition] = []
        done: set[str] = set()
        framed = framed if framed is not None else {}
        while True:
            try:
                if framed:
                    self._insert_framed(framed, buffers, dlq)
                for topic, rows in buffers.items():
                    table = self._tables[topic]
                    name = table.name
                    if name in done or not rows:
                        continue
                    self._ch().insert(
                        table.name, rows, column_names=table.column_names, settings=INSERT_SETTINGS
                    )
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

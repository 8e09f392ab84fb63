"""The sink stores every event once (deduplicated on replay), dead-letters poison, survives ClickHouse outages."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import replace
from decimal import Decimal

import pytest
from confluent_kafka import TopicPartition

from infra import registry
from infra.clickhouse.client import connect
from infra.clickhouse.tables import event_table
from infra.kafka import consumer, ensure_topics, produce, producing
from infra.serde import TopicSerde
from schemas import events as ev
from schemas.topics import COMPLETED, FEEDBACK


def _start(sink) -> tuple[threading.Thread, list[BaseException]]:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []

    def target() -> None:
        try:
            sink.run()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, errors


def _events(n: int, run: str) -> list[ev.InferenceCompleted]:
    return [
        ev.InferenceCompleted(
            producer="t",
            request_id=f"{run}-{i}",
            model="m",
            version=f"v{i % 2}",
            status=ev.CompletionStatus.ok,
            completion=f"answer {i} ü 'q'",
            latency_ms=float(i),
            cost=Decimal(i) / Decimal(10**9),
            completion_tokens=i % 7,
            choices=[  # every third asked n = 2 (an array of records: a JSON column)
                ev.CompletionChoice(index=k, completion=f"c{k} ü", finish_reason=None if k else "stop")
                for k in range(2 if i % 3 == 0 else 0)
            ],
        )
        for i in range(n)
    ]


@pytest.mark.reliability
def test_sink_once_per_event_across_replay_with_dlq(stack, unique) -> None:
    from consumers.clickhouse_sink.sink import ClickHouseSink

    topics = [replace(COMPLETED, name=f"completed-{unique}"), replace(FEEDBACK, name=f"feedback-{unique}")]
    ensure_topics(stack.kafka, only=topics)
    reg = registry.client(stack.registry)
    for t in topics:
        registry.register(reg, t)
    ser = TopicSerde(reg, topics[0])
    fser = TopicSerde(reg, topics[1])
    events = _events(3_000, unique)
    feedback = [
        ev.FeedbackSubmitted(
            producer="t",
            request_id=e.request_id,
            model="m",
            kind=ev.FeedbackKind.thumbs,
            value=1.0,
            source=ev.FeedbackSource.user,
        )
        for e in events[:500]
    ]
    with producing(stack.kafka) as p:
        for e in events:
            produce(p, topics[0].name, e.request_id, ser.encode_event(e))
        for f in feedback:
            produce(p, topics[1].name, f.request_id, fser.encode_event(f))
        produce(p, topics[0].name, "poison", b"\x00\x00\x00\x00\x01garbage")
        # framed with the topic's own schema id, so it reaches ClickHouse's decoder: a corrupt body
        # fails that batch there, and the sink decodes the batch itself, poison to the DLQ
        produce(p, topics[0].name, "poison-2", b"\x00" + ser.schema_id.to_bytes(4, "big") + b"\xff\xff\xff")

    ch = stack.clickhouse.model_copy(update={"database": f"sink_{unique}"})
    table = event_table(topics[0]).name
    client = connect(ch, database="default")

    def run_sink(group: str) -> object:
        sink = ClickHouseSink(
            stack.kafka,
            ch,
            reg,
            topics=topics,
            group_id=group,
            batch_size=1_000,
            batch_seconds=0.5,
            avro_registry_url=stack.registry.url,  # ClickHouse decodes the framed records
        )
        deadline = time.monotonic() + 60
        t, errors = _start(sink)
        while time.monotonic() < deadline and sink.stats.consumed < 3_502 and not errors:
            time.sleep(0.2)
        sink.stop()
        t.join(30)
        assert not errors, errors
        return sink.stats

    stats = run_sink(f"sink-{unique}")
    assert stats.consumed == 3_502 and stats.dead_lettered == 2  # type: ignore[attr-defined]
    assert stats.batches >= 4  # type: ignore[attr-defined]  # none over batch_size (1,000)
    assert stats.decode_fallbacks >= 1  # type: ignore[attr-defined]  # the batch with poison-2
    assert stats.decoded_by_clickhouse >= 3_500 - 1_000  # type: ignore[attr-defined]  # all but that batch
    q = f"SELECT count(), uniqExact(event_id), sum(completion_tokens) FROM {ch.database}.{table} FINAL"
    assert client.query(q).result_rows == [(3_000, 3_000, sum(e.completion_tokens for e in events))]
    fb = client.query(f"SELECT count() FROM {ch.database}.feedback_submitted FINAL").result_rows
    assert fb == [(500,)]
    # exact values survive the trip
    row = client.query(
        f"SELECT completion, cost, request_id FROM {ch.database}.{table} FINAL "
        "WHERE request_id = {r:String}",
        parameters={"r": events[7].request_id},
    ).result_rows
    assert row == [(events[7].completion, events[7].cost, events[7].request_id)]
    # the nested choices read back the same whichever side decoded the batch
    stored = dict(client.query(f"SELECT request_id, choices FROM {ch.database}.{table} FINAL").result_rows)
    assert {r: json.loads(c) for r, c in stored.items()} == {
        e.request_id: [c.model_dump() for c in e.choices] for e in events
    }

    # Kafka coordinates: each row's _partition and _offset are its record's own (ClickHouse decoded
    # most of them; the sink set the offsets from runs of consecutive ones)
    where: dict[str, tuple[int, int]] = {}
    c = consumer(stack.kafka, f"coords-{unique}")
    c.subscribe([topics[0].name])
    deadline = time.monotonic() + 60
    while len(where) < 3_002 and time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is not None and not m.error():
            where[m.key().decode()] = (m.partition(), m.offset())
    c.close()
    coords = client.query(
        f"SELECT request_id, _topic, _partition, _offset FROM {ch.database}.{table} FINAL"
    ).result_rows
    wrong = [r for r in coords if where.get(r[0]) != (r[2], r[3]) or r[1] != topics[0].name]
    assert len(coords) == 3_000 and not wrong, wrong[:5]

    # Replay everything with a new group: the rows are written again, FINAL still counts each event once.
    run_sink(f"sink-replay-{unique}")
    assert client.query(q).result_rows == [(3_000, 3_000, sum(e.completion_tokens for e in events))]
    raw = client.query(f"SELECT count() FROM {ch.database}.{table}").result_rows[0][0]
    assert raw >= 3_000  # duplicates physically present until merges; FINAL hides them


@pytest.mark.reliability
def test_sink_pauses_while_clickhouse_is_down_and_catches_up(stack, unique, event_topic) -> None:
    from consumers.clickhouse_sink.sink import ClickHouseSink
    from infra.local.services import clickhouse as clickhouse_service

    topic, ser = event_topic(COMPLETED)
    reg = registry.client(stack.registry)
    ch = stack.clickhouse.model_copy(update={"database": f"sinkdown_{unique}"})
    sink = ClickHouseSink(
        stack.kafka,
        ch,
        reg,
        topics=[topic],
        group_id=f"g-{unique}",
        batch_size=500,
        batch_seconds=0.3,
        max_backoff_s=1.0,
        avro_registry_url=stack.registry.url,
    )
    t, errors = _start(sink)

    def committed() -> int:
        """The records the sink's group has committed (offsets start at 0: their sum is the count)."""
        probe = consumer(stack.kafka, f"g-{unique}")  # reads the group's offsets, does not join it
        try:
            parts = probe.list_topics(topic.name, timeout=10).topics[topic.name].partitions
            got = probe.committed([TopicPartition(topic.name, p) for p in parts], timeout=10)
        finally:
            probe.close()
        return sum(max(tp.offset, 0) for tp in got)

    first, second = _events(1_000, unique), _events(2_000, unique)[1_000:]
    with producing(stack.kafka) as p:
        for e in first:
            produce(p, topic.name, e.request_id, ser.encode_event(e))
    deadline = time.monotonic() + 30
    while sink.stats.inserted < 1_000 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sink.stats.inserted == 1_000

    svc = clickhouse_service(stack.local)
    svc.stop()  # ClickHouse goes away
    try:
        with producing(stack.kafka) as p:
            for e in second:
                produce(p, topic.name, e.request_id, ser.encode_event(e))
        deadline = time.monotonic() + 30
        while sink.stats.insert_failures < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sink.stats.insert_failures >= 2 and sink.stats.inserted == 1_000
        # the group's offsets cover exactly the rows that are in: no batch read meanwhile is committed
        assert committed() == 1_000 == sink.stats.committed
    finally:
        svc.start()
    deadline = time.monotonic() + 60
    while sink.stats.committed < 2_000 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert committed() == 2_000
    sink.stop()
    t.join(30)
    assert not errors, errors
    assert sink.stats.decoded_by_clickhouse == 2_000 and sink.stats.decode_fallbacks == 0
    client = connect(ch, database="default")
    rows = client.query(f"SELECT count(), uniqExact(event_id) FROM {ch.database}.inference_completed FINAL")
    assert rows.result_rows == [(2_000, 2_000)]
    assert uuid.UUID(
        str(client.query(f"SELECT any(event_id) FROM {ch.database}.inference_completed").result_rows[0][0])
    )

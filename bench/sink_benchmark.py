"""sink.rows_per_s: the ClickHouse sink (Kafka -> decode -> insert -> commit) vs a raw insert of the same rows."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace

from bench.harness import Context, Result
from bench.serde_benchmark import _records

N = 20_000


def sink_rows(ctx: Context) -> list[Result]:
    from consumers.clickhouse_sink.sink import ClickHouseSink
    from infra import registry
    from infra.clickhouse.client import connect
    from infra.clickhouse.tables import event_table
    from infra.kafka import ensure_topics, produce, producing
    from infra.serde import TopicSerde
    from schemas.topics import COMPLETED

    reg = registry.client(ctx.stack["registry"])
    topic = replace(COMPLETED, name=f"bench-sink-{uuid.uuid4().hex[:6]}")
    ensure_topics(ctx.stack["kafka"], only=[topic])
    registry.register(reg, topic)
    serde = TopicSerde(reg, topic)
    records = _records()[:N]
    with producing(ctx.stack["kafka"]) as p:
        for r in records:
            produce(p, topic.name, r["request_id"], serde.encode(r))

    ch = ctx.stack["clickhouse"].model_copy(update={"database": f"bench_{uuid.uuid4().hex[:6]}"})
    sink = ClickHouseSink(
        ctx.stack["kafka"],
        ch,
        reg,
        topics=[topic],
        group_id=f"bench-{uuid.uuid4().hex[:6]}",
        batch_size=10_000,
        batch_seconds=1.0,
    )
    t = threading.Thread(target=sink.run, daemon=True)
    t0 = time.perf_counter()
    t.start()
    while sink.stats.committed < N and time.perf_counter() - t0 < 300:  # rows in and offsets committed
        time.sleep(0.005)
    done = time.monotonic()
    startup_s = (sink.stats.first_message_at or done) - (done - (time.perf_counter() - t0))
    sink_s = done - (sink.stats.first_message_at or done)
    sink.stop()
    t.join(30)
    if sink.stats.inserted != N:
        raise RuntimeError(f"sink inserted {sink.stats.inserted} of {N}")

    # peer: the same rows, already decoded, inserted straight with clickhouse-connect
    table = event_table(topic)
    rows = [table.row(r, 0, i) for i, r in enumerate(records)]
    client = connect(ch, database=ch.database)
    client.command(f"CREATE TABLE raw_peer AS {table.name}")
    t1 = time.perf_counter()
    for i in range(0, N, 10_000):
        client.insert("raw_peer", rows[i : i + 10_000], column_names=table.column_names)
    raw_s = time.perf_counter() - t1
    client.command(f"DROP DATABASE {ch.database}")
    return [
        Result(
            name="sink.rows_per_s",
            value=N / sink_s,
            unit="rows/s",
            peer="clickhouse-connect insert of the same decoded rows",
            peer_value=N / raw_s,
            goal="≥ 100,000 rows/s and ≥ 0.8× raw",
            goal_ratio=0.8,
            goal_value=100_000,
            method=(
                f"{N:,} InferenceCompleted events (1-2 KiB completions) waiting on a 3-partition topic; ours = "
                "ClickHouseSink from its first consumed record until every row is inserted and committed "
                "(consume, Avro decode, row build, insert, commit, batches of 10,000); its start-up before that "
                f"(migrations, group join) took {startup_s:.1f} s and is not counted; peer = the already "
                "decoded rows inserted in 10,000-row batches into an identical table of the embedded server."
            ),
        )
    ]

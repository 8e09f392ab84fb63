"""Foundation benchmarks: Kafka produce throughput, ClickHouse insert through the HTTP front."""

from __future__ import annotations

import re
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.harness import Context, Result

MSG_SIZE = 1024
N_MESSAGES = 200_000


def _topic(ctx: Context) -> str:
    from confluent_kafka.admin import NewTopic

    from infra.kafka import admin, wait_visible

    name = f"bench-{uuid.uuid4().hex[:8]}"
    a = admin(ctx.stack["kafka"])
    a.create_topics([NewTopic(name, 3, 1)])[name].result()
    wait_visible(a, [name])
    return name


def _ours_produce(ctx: Context, topic: str) -> float:
    from confluent_kafka import Producer

    conf = {
        **ctx.stack["kafka"].client_config(),
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "compression.type": "none",
    }
    p = Producer(conf)
    payload = b"x" * MSG_SIZE
    failed = 0

    def cb(err, msg):
        nonlocal failed
        if err is not None:
            failed += 1

    t0 = time.perf_counter()
    for _ in range(N_MESSAGES):
        while True:
            try:
                p.produce(topic, payload, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
    left = p.flush(120)
    dt = time.perf_counter() - t0
    if left or failed:
        raise RuntimeError(f"{failed} failed, {left} undelivered")
    return N_MESSAGES * MSG_SIZE / dt / 1e6


def _peer_produce(ctx: Context, topic: str) -> float:
    from infra.local.artifacts import kafka_lib

    lib = kafka_lib(ctx.stack["local"])
    out = subprocess.run(
        [
            "java",
            "-Xmx512m",
            "-cp",
            f"{lib}/*",
            "org.apache.kafka.tools.ProducerPerformance",
            "--topic",
            topic,
            "--num-records",
            str(N_MESSAGES),
            "--record-size",
            str(MSG_SIZE),
            "--throughput",
            "-1",
            "--producer-props",
            f"bootstrap.servers={ctx.stack['kafka'].bootstrap_servers}",
            "acks=all",
            "enable.idempotence=true",
            "linger.ms=5",
            "batch.size=1000000",
            "compression.type=none",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    m = re.findall(r"records/sec \(([\d.]+) MB/sec\)", out.stdout)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"ProducerPerformance failed: {out.stdout[-500:]}{out.stderr[-500:]}")
    mib_s = float(m[-1])  # the summary line; Kafka's tool reports MiB/s (bytes / 1024 / 1024)
    return mib_s * 1024 * 1024 / 1e6


def kafka_produce(ctx: Context) -> list[Result]:
    topic = _topic(ctx)
    _ours_produce(ctx, topic)  # warm-up: connections, JIT of the broker
    ours = _ours_produce(ctx, topic)
    peer_topic = _topic(ctx)
    _peer_produce(ctx, peer_topic)  # the same warm-up for the peer: JVM start, JIT, connections
    peer = _peer_produce(ctx, peer_topic)
    return [
        Result(
            name="infra.kafka_produce_mb_s",
            value=ours,
            unit="MB/s",
            peer="Kafka ProducerPerformance (Java, same settings)",
            peer_value=peer,
            goal="≥ 0.8× the Java tool",
            goal_ratio=0.8,
            method=(
                f"{N_MESSAGES:,} messages of {MSG_SIZE} B, acks=all, idempotent, linger 5 ms, no compression, "
                "3 partitions, single-node KRaft broker 4.1.2 on the same 2-core machine; ours = "
                "confluent-kafka Producer from one Python thread with delivery callbacks, after one warm-up run; "
                "peer = org.apache.kafka.tools.ProducerPerformance from the same jars, also after one warm-up run "
                "(each run a fresh JVM)."
            ),
        )
    ]


N_ROWS = 500_000
INSERT_ROUNDS = 8


def clickhouse_insert(ctx: Context) -> list[Result]:
    import chdb.session
    import clickhouse_connect  # noqa: F401

    from infra.clickhouse.client import body_pieces, connect

    settings = ctx.stack["clickhouse"]
    client = connect(settings, database="default")
    ddl = (
        "CREATE TABLE {t} (event_id UUID, model String, version String, latency_ms Float64, "
        "tokens UInt32, completion String, at DateTime64(3)) ENGINE = MergeTree ORDER BY (model, at)"
    )
    client.command(ddl.format(t="bench_src"))
    client.command(
        "INSERT INTO bench_src SELECT generateUUIDv4(), 'smollm2', concat('v', toString(number % 4)), "
        f"rand() % 2000 / 3.0, rand() % 300, repeat('token ', 20), now64(3) FROM numbers({N_ROWS})"
    )
    # The same rows as one Native block, as clickhouse-connect would send them.
    block = client.raw_query("SELECT * FROM bench_src", fmt="Native")
    columns = ["event_id", "model", "version", "latency_ms", "tokens", "completion", "at"]
    rows = client.query("SELECT * FROM bench_src").result_rows

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    # ours, raw: the identical Native bytes over HTTP (what the front costs), sent as the sink sends
    # its batches: a generator of 1 MB pieces (body_pieces), so clickhouse-connect puts the statement
    # in the URL and the body goes chunked, the client framing a piece while the server parses the
    # one before. Beside it as .bytes_body: given bytes, clickhouse-connect copies the whole block
    # behind the statement before the first byte is sent. .client_rows: clickhouse-connect insert()
    # from Python rows (serialization included). Peer: chdb in this process, inserting the same bytes
    # from a file. Every table is emptied before each round; the four take turns in a rotating order
    # (each goes first in two rounds of eight), 0.3 s apart, so the stack's JVMs warming up after start
    # and the writes of the insert before (all on the same 2 cores) reach all four alike; round 0 is
    # not counted.
    def pieces() -> Any:  # clickhouse-connect types it a generator of bytes; urllib3 frames memoryviews too
        return body_pieces([block])

    for t in ("bench_http", "bench_bytes", "bench_rows"):
        client.command(ddl.format(t=t))
    runs: dict[str, list[float]] = {"http": [], "bytes": [], "rows": [], "peer": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "block.native"
        path.write_bytes(block)
        sess = chdb.session.Session(str(Path(tmp) / "db"))
        sess.query(ddl.format(t="t"))
        for r in range(INSERT_ROUNDS + 1):  # round 0 unmeasured
            for t in ("bench_http", "bench_bytes", "bench_rows"):  # no parts left to merge meanwhile
                client.command(f"TRUNCATE TABLE {t}")
            sess.query("TRUNCATE TABLE t")
            inserts = {
                "http": lambda: client.raw_insert("bench_http", columns, pieces(), fmt="Native"),
                "bytes": lambda: client.raw_insert("bench_bytes", columns, block, fmt="Native"),
                "rows": lambda: client.insert("bench_rows", rows, column_names=columns),
                "peer": lambda: sess.query(f"INSERT INTO t FROM INFILE '{path}' FORMAT Native"),
            }
            order = list(inserts)[r % 4 :] + list(inserts)[: r % 4]  # each goes first, second, ... alike
            took = {}
            for k in order:
                time.sleep(0.3)  # the last insert's parts written out before the next clock starts
                took[k] = timed(inserts[k])
            for k, v in took.items():
                if r:
                    runs[k].append(v)
        got = int(sess.query("SELECT count() FROM t", "TabSeparated").bytes())
        sess.close()
    if got != N_ROWS:
        raise RuntimeError(f"peer inserted {got} rows in the last round, expected {N_ROWS}")
    counts = client.query(
        "SELECT (SELECT count() FROM bench_http), (SELECT count() FROM bench_bytes), "
        "(SELECT count() FROM bench_rows)"
    ).result_rows[0]
    if counts != (N_ROWS,) * 3:
        raise RuntimeError(f"embedded server holds {counts} rows after the last round, expected {N_ROWS}")
    for t in ("bench_src", "bench_http", "bench_bytes", "bench_rows"):
        client.command(f"DROP TABLE {t}")
    http_s, bytes_s, rows_s, peer_s = (statistics.median(runs[k]) for k in ("http", "bytes", "rows", "peer"))
    spread = "; ".join(
        f"{label} {', '.join(f'{N_ROWS / x / 1e6:.2f}' for x in runs[k])}"
        for label, k in (("ours", "http"), ("bytes body", "bytes"), ("client rows", "rows"), ("peer", "peer"))
    )
    method = (
        f"{N_ROWS:,} rows of 7 columns (UUID, 2 strings, float, int, 120-char string, DateTime64), "
        f"{len(block) / 1e6:.0f} MB as Native. {INSERT_ROUNDS} rounds, each inserting with all four "
        f"into emptied tables, in an order that rotates by one each round, 0.3 s apart, after one "
        f"unmeasured round; the median of each reported "
        f"(M rows/s of each round: {spread}). "
    )
    return [
        Result(
            name="infra.clickhouse_insert_rows_s",
            value=N_ROWS / http_s,
            unit="rows/s",
            peer="chdb in-process INSERT FROM INFILE (same bytes)",
            peer_value=N_ROWS / peer_s,
            goal="≥ 0.7× in-process",
            goal_ratio=0.7,
            method=method + "Ours: clickhouse-connect raw_insert of the Native block, given as a generator "
            "of 1 MB pieces (as the sink sends its batches: the statement in the URL, the body sent "
            "chunked), to the embedded HTTP server (the front streams the request body into chdb's streaming "
            "inserter as it arrives; no temp file); peer: the same bytes in this process, a chdb "
            "session's INSERT INTO t FROM INFILE of them written to a file before the clock starts. "
            "The ratio is what the HTTP front costs.",
        ),
        Result(
            name="infra.clickhouse_insert_rows_s.bytes_body",
            value=N_ROWS / bytes_s,
            unit="rows/s",
            peer="chdb in-process INSERT FROM INFILE (same bytes)",
            peer_value=N_ROWS / peer_s,
            goal="report (what clickhouse-connect's copy of a bytes body costs)",
            method=method + "Ours: the same raw_insert given the block as bytes, which clickhouse-connect "
            "copies into a new body with the INSERT statement in front (sent with a Content-Length); "
            "the same server, the same run.",
        ),
        Result(
            name="infra.clickhouse_insert_rows_s.client_rows",
            value=N_ROWS / rows_s,
            unit="rows/s",
            peer="chdb in-process INSERT FROM INFILE (same bytes)",
            peer_value=N_ROWS / peer_s,
            goal="report",
            method=method + "Ours: clickhouse-connect insert() from Python tuples, so "
            "client-side serialization is included.",
        ),
    ]

"""scale.streams_events_per_s and scale.sink_rows_per_s: the same work with 1 and with 2 processes in one
consumer group, measured in the same run (issue 9's scaling curve on this machine).

Each process count gets fresh topics (4 partitions, so 2 processes get 2 each) and a fresh group. The
processes are started and have joined their group before any record is produced, so neither start-up
nor the rebalance of a late joiner is in the window: throughput = records / (time from the first record
produced until all are done), read from the workers' /stats/ pages (streams) or ClickHouse's row count
(sink). The records are encoded before the clock starts; producing them is inside the window for both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.harness import Context, Result

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4
STREAM_EVENTS = 80_000
SINK_ROWS = 60_000
PROCESSES = (1, 2)


def _spawn(ctx: Context, argv: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
    log_path = Path(ctx.stack["local"].state_dir) / log_name
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.main", *argv],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _stable_group(ctx: Context, group: str, members: int, timeout_s: float = 180) -> None:
    """Wait until ``group`` is Stable with ``members`` members that all hold partitions."""
    from confluent_kafka import ConsumerGroupState

    from infra.kafka import admin

    a = admin(ctx.stack["kafka"])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            desc = a.describe_consumer_groups([group], request_timeout=10)[group].result()
        except Exception:  # the group does not exist yet
            time.sleep(0.5)
            continue
        if (
            desc.state == ConsumerGroupState.STABLE
            and len(desc.members) == members
            and all(m.assignment.topic_partitions for m in desc.members)
        ):
            return
        time.sleep(0.5)
    raise RuntimeError(f"group {group} did not settle with {members} members in {timeout_s:.0f}s")


def _produce_all(ctx: Context, topic: str, payloads: list[bytes]) -> float:
    """Produce the pre-encoded records (keys r0, r1, ...); returns when the clock started."""
    from infra.kafka import produce, producing

    started = time.monotonic()
    with producing(ctx.stack["kafka"]) as p:
        for i, value in enumerate(payloads):
            produce(p, topic, f"r{i}", value)
    return started


def _rate(started: float, samples: list[tuple[float, int]], total: int) -> float:
    """Records/s from the first record produced (``started``) until the first sample that saw
    ``total`` done: the idle, joined processes start the moment records arrive, and a coarse batch
    (a sink inserts up to 5,000 rows at once) cannot inflate the rate as a first-progress window would."""
    last = next(t for t, n in samples if n >= total)
    return total / (last - started)


def _streams_run(ctx: Context, workers: int) -> float:
    from bench.streams_benchmark import _completed
    from infra.local.process import free_port
    from schemas.events import utcnow
    from schemas.topics import COMPLETED, FEEDBACK, METRICS, REQUESTED, REWARDED

    suffix = f"-scale{workers}w{uuid.uuid4().hex[:6]}"
    specs = [replace(s, partitions=PARTITIONS) for s in (REQUESTED, COMPLETED, FEEDBACK, REWARDED)]
    topics = _topics_for(ctx, suffix, [*specs, METRICS])
    topic, serde = topics[COMPLETED.name]
    app_id = f"bench-scale{suffix}"
    env = {
        "RFTLOOP_KAFKA_BOOTSTRAP_SERVERS": ctx.stack["kafka"].bootstrap_servers,
        "RFTLOOP_REGISTRY_URL": ctx.stack["registry"].url,
        "RFTLOOP_STREAMS_APP_ID": app_id,
        "RFTLOOP_STREAMS_TOPIC_SUFFIX": suffix,
        "RFTLOOP_STREAMS_AGENTS": "metrics",
    }
    ports = [free_port() for _ in range(workers)]
    with ExitStack() as stack:
        for i, port in enumerate(ports):
            data = str(Path(ctx.stack["local"].state_dir) / f"faust{suffix}-{i}")
            proc = _spawn(
                ctx,
                ["streams", "--web-port", str(port)],
                {**env, "RFTLOOP_STREAMS_DATA_DIR": data},
                f"streams{suffix}-{i}.log",
            )
            stack.callback(_kill, proc)
        _stable_group(ctx, app_id, workers)
        _stable_group(ctx, f"{app_id}-buckets", workers)  # stage 1's own group (streams/buckets.py)
        time.sleep(2)  # faust's own assignment (tables, standbys) settles after the group does
        at = utcnow()
        samples: list[tuple[float, int]] = []
        payloads = [serde.encode(_completed(i, at)) for i in range(STREAM_EVENTS)]
        started = _produce_all(ctx, topic.name, payloads)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            total = 0
            for port in ports:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats/", timeout=5) as r:
                    total += int(json.loads(r.read())["bucketed"])
            samples.append((time.monotonic(), total))
            if total >= STREAM_EVENTS:
                break
            time.sleep(0.05)
    if samples[-1][1] < STREAM_EVENTS:
        raise RuntimeError(f"{workers} worker(s) folded {samples[-1][1]} of {STREAM_EVENTS} events")
    return _rate(started, samples, STREAM_EVENTS)


def _topics_for(ctx: Context, suffix: str, specs: list[Any]) -> dict[str, Any]:
    from infra import registry
    from infra.kafka import ensure_topics
    from infra.serde import TopicSerde

    reg = registry.client(ctx.stack["registry"])
    out = {}
    for spec in specs:
        topic = replace(spec, name=spec.name + suffix)
        ensure_topics(ctx.stack["kafka"], only=[topic])
        registry.register(reg, topic)
        out[spec.name] = (topic, TopicSerde(reg, topic))
    return out


def _curve(name: str, unit: str, one: str, rates: dict[int, float], method: str) -> list[Result]:
    """The 2-process figure beside the 1-process one of the same run."""
    print(f"bench: {name} by processes {rates}", flush=True)
    return [
        Result(
            name=name,
            value=rates[2],
            unit=f"{unit} with 2 {one}s",
            peer=f"1 {one}, same run",
            peer_value=rates[1],
            goal="report the curve (issue 9); the 2 cores are the limit here",
            method=f"{method} 1 {one}: {rates[1]:,.0f}/s, 2 {one}s: {rates[2]:,.0f}/s.",
        )
    ]


def streams_scaling(ctx: Context) -> list[Result]:
    return _curve(
        "scale.streams_events_per_s",
        "events/s",
        "worker",
        {n: _streams_run(ctx, n) for n in PROCESSES},
        f"{STREAM_EVENTS:,} InferenceCompleted (pre-encoded) produced onto a fresh {PARTITIONS}-partition "
        "topic after 1 or 2 `rftloop streams` workers (metrics agents, one faust app id) had joined "
        "their groups (faust's and stage 1's transactional one); rate = events / (first produced → all folded, the sum of the workers' /stats/ "
        "`bucketed`). Producer, workers, Kafka and ClickHouse share the 2 cores.",
    )


def _sink_run(ctx: Context, sinks: int) -> float:
    from bench.serde_benchmark import _records
    from infra.clickhouse.client import connect
    from infra.clickhouse.migrate import migrate
    from schemas.topics import COMPLETED, STORED_TOPICS

    suffix = f"-scale{sinks}s{uuid.uuid4().hex[:6]}"
    topics = _topics_for(ctx, suffix, [replace(s, partitions=PARTITIONS) for s in STORED_TOPICS])
    topic, serde = topics[COMPLETED.name]
    database = f"bench_scale_{sinks}s_{uuid.uuid4().hex[:6]}"
    client = connect(ctx.stack["clickhouse"], database="default")
    migrate(client, database)  # once, before the sinks start (each would otherwise race to apply it)
    group = f"bench-scale-sink{suffix}"
    env = {
        "RFTLOOP_KAFKA_BOOTSTRAP_SERVERS": ctx.stack["kafka"].bootstrap_servers,
        "RFTLOOP_REGISTRY_URL": ctx.stack["registry"].url,
        "RFTLOOP_CLICKHOUSE_URL": ctx.stack["clickhouse"].url,
        "RFTLOOP_CLICKHOUSE_DATABASE": database,
    }
    records = _records()
    payloads = [
        serde.encode(
            records[i % len(records)] | {"request_id": f"r{i}", "event_id": str(uuid.UUID(int=i + 1))}
        )
        for i in range(SINK_ROWS)
    ]
    samples: list[tuple[float, int]] = []
    with ExitStack() as stack:
        for i in range(sinks):
            argv = [
                "sink",
                f"--topic-suffix={suffix}",
                "--group",
                group,
                "--batch-size",
                "5000",
                "--batch-seconds",
                "0.5",
            ]
            stack.callback(_kill, _spawn(ctx, argv, env, f"sink{suffix}-{i}.log"))
        _stable_group(ctx, group, sinks)
        started = _produce_all(ctx, topic.name, payloads)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            n = int(client.query(f"SELECT count() FROM {database}.inference_completed").result_rows[0][0])
            samples.append((time.monotonic(), n))
            if n >= SINK_ROWS:
                break
            stalled = [t for t, m in samples if m == n]
            if samples[-1][0] - stalled[0] > 60:
                raise RuntimeError(f"{sinks} sink(s) stuck at {n} of {SINK_ROWS} rows; see {group} logs")
            time.sleep(0.02)
    stored = int(
        client.query(f"SELECT uniqExact(event_id) FROM {database}.inference_completed").result_rows[0][0]
    )
    client.command(f"DROP DATABASE {database}")
    if stored != SINK_ROWS:
        raise RuntimeError(f"{sinks} sink(s) stored {stored} of {SINK_ROWS} distinct rows")
    return _rate(started, samples, SINK_ROWS)


def sink_scaling(ctx: Context) -> list[Result]:
    return _curve(
        "scale.sink_rows_per_s",
        "rows/s",
        "sink",
        {n: _sink_run(ctx, n) for n in PROCESSES},
        f"{SINK_ROWS:,} InferenceCompleted (1-2 KiB completions, pre-encoded) produced onto a fresh "
        f"{PARTITIONS}-partition topic after 1 or 2 `rftloop sink` processes (one group, batches of "
        "5,000 or 0.5 s) had joined; rate = rows / (first produced → all visible in ClickHouse, "
        "count() polled every 20 ms); every event_id stored once checked. Producer, sinks, Kafka "
        "and ClickHouse share the 2 cores.",
    )

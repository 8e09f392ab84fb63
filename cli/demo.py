"""`make demo`: bring the local stack up, push a smoke flow of real events through it, stop.

Today's flow proves the foundation end to end: Avro events framed against the
registry go through Kafka, are read back by a consumer group, land in the
embedded ClickHouse and are aggregated there per model version. (The full
closed loop — gateway, streams, trainer, canary — builds on this.)
"""

from __future__ import annotations

import random
import time
import uuid
from decimal import Decimal

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from infra import registry
from infra.clickhouse.client import connect
from infra.kafka import consumer, produce, producing
from infra.local import stack
from infra.serde import TopicSerde
from infra.settings import (
    ClickHouseSettings,
    KafkaSettings,
    LocalStackSettings,
    RegistrySettings,
    load_or_explain,
)
from schemas import events as ev
from schemas.topics import COMPLETED

N_EVENTS = 2_000


def run_demo(keep: bool = False) -> int:
    console = Console()
    local: LocalStackSettings = load_or_explain(LocalStackSettings)  # type: ignore[assignment]
    kafka: KafkaSettings = load_or_explain(KafkaSettings)  # type: ignore[assignment]
    reg_settings: RegistrySettings = load_or_explain(RegistrySettings)  # type: ignore[assignment]
    ch: ClickHouseSettings = load_or_explain(ClickHouseSettings)  # type: ignore[assignment]
    t_start = time.perf_counter()
    console.rule("[bold]rftloop demo: local stack")
    stack.up(local, say=lambda m: console.print(f"  {m}"))
    try:
        from infra.kafka import ensure_topics

        created = [r for r in ensure_topics(kafka) if r.action == "created"]
        console.print(f"  topics: {len(created)} created")
        for subject in registry.register_all(registry.client(reg_settings)):
            console.print(f"  schema {subject.subject}: {subject.action} (id {subject.schema_id})")
        _smoke_flow(console, kafka, reg_settings, ch)
        rows = stack.status(local)
        t = Table(title="stack health")
        for col in ("component", "healthy", "detail"):
            t.add_column(col)
        for r in rows:
            t.add_row(r.name, "yes" if r.healthy else "NO", r.detail)
        console.print(t)
        console.print(f"demo finished in {time.perf_counter() - t_start:.0f}s")
        return 0 if all(r.healthy for r in rows) else 1
    finally:
        if keep:
            console.print("stack left running (`rftloop down` stops it)")
        else:
            console.rule("stopping")
            stack.down(local, say=lambda m: console.print(f"  {m}"))


def _smoke_flow(
    console: Console, kafka: KafkaSettings, reg: RegistrySettings, ch: ClickHouseSettings
) -> None:
    console.rule("[bold]smoke flow: events → Kafka → consumer group → ClickHouse")
    serde = TopicSerde(registry.client(reg), COMPLETED)
    rng = random.Random(1)
    run = uuid.uuid4().hex[:8]
    sent: list[ev.InferenceCompleted] = []
    with Progress(console=console) as progress, producing(kafka) as p:
        task = progress.add_task("producing InferenceCompleted", total=N_EVENTS)
        for i in range(N_EVENTS):
            e = ev.InferenceCompleted(
                producer="demo",
                request_id=f"{run}-{i}",
                model="smollm2-135m-instruct",
                version=rng.choice(["base", "v1"]),
                status=rng.choice([ev.CompletionStatus.ok] * 19 + [ev.CompletionStatus.error]),
                completion="42",
                latency_ms=rng.lognormvariate(6, 0.4),
                prompt_tokens=30,
                completion_tokens=rng.randint(2, 24),
                cost=Decimal(rng.randint(1, 1000)) / Decimal(10**6),
            )
            produce(p, COMPLETED.name, COMPLETED.key_of(e), serde.encode_event(e))
            sent.append(e)
            progress.advance(task)
    ours = {e.request_id for e in sent}
    got: list[ev.InferenceCompleted] = []
    c = consumer(kafka, f"demo-{run}")
    c.subscribe([COMPLETED.name])
    deadline = time.monotonic() + 60
    with Progress(console=console) as progress:
        task = progress.add_task("consuming them back", total=N_EVENTS)
        while len(got) < N_EVENTS and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            decoded = serde.decode_event(msg.value())
            if isinstance(decoded, ev.InferenceCompleted) and decoded.request_id in ours:
                got.append(decoded)
                progress.advance(task)
    c.commit(asynchronous=False)
    c.close()
    if len(got) != N_EVENTS:
        raise RuntimeError(f"consumed {len(got)} of {N_EVENTS} events")

    client = connect(ch, database="default")
    client.command(f"CREATE DATABASE IF NOT EXISTS {ch.database}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {ch.database}.demo_completed (request_id String, version String, "
        "status String, latency_ms Float64, completion_tokens UInt32, cost Decimal(18, 9), run String) "
        "ENGINE = ReplacingMergeTree ORDER BY (run, request_id)"
    )
    client.insert(
        f"{ch.database}.demo_completed",
        [
            (e.request_id, e.version, e.status.value, e.latency_ms, e.completion_tokens, e.cost, run)
            for e in got
        ],
        column_names=["request_id", "version", "status", "latency_ms", "completion_tokens", "cost", "run"],
    )
    result = client.query(
        f"SELECT version, count() AS requests, countIf(status = 'error') / count() AS error_rate, "
        "quantile(0.5)(latency_ms), quantile(0.95)(latency_ms), sum(cost) "
        f"FROM {ch.database}.demo_completed FINAL WHERE run = {{run:String}} GROUP BY version ORDER BY version",
        parameters={"run": run},
    )
    t = Table(title=f"ClickHouse: per-version figures of this run ({N_EVENTS} events)")
    for col in ("version", "requests", "error rate", "p50 ms", "p95 ms", "cost"):
        t.add_column(col)
    for version, n, er, p50, p95, cost in result.result_rows:
        t.add_row(version, str(n), f"{er:.1%}", f"{p50:.0f}", f"{p95:.0f}", f"{cost:.6f}")
    console.print(t)
    if sum(r[1] for r in result.result_rows) != N_EVENTS:
        raise RuntimeError("ClickHouse does not hold every event")

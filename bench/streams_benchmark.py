"""streams.events_per_s and e2e.freshness_ms.

streams.events_per_s: one real faust worker (`rftloop streams`, metrics agents
only) folding InferenceCompleted into windowed metrics, vs a plain
confluent-kafka consumer loop that decodes the same records with the same serde
and folds them into the same accumulators, in the same run.

e2e.freshness_ms: events produced at a steady rate for a while, each stamped
when produced; the ClickHouse sink writes them; ClickHouse stamps each row when
it becomes visible (`_inserted_at`, migration 0003); the lag's p50/p99.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.harness import Context, Result
from infra.local.process import free_port

ROOT = Path(__file__).resolve().parents[1]
N = 100_000


def _topics(ctx: Context, suffix: str) -> dict[str, Any]:
    from infra import registry
    from infra.kafka import ensure_topics
    from infra.serde import TopicSerde
    from schemas.topics import COMPLETED, EVALUATIONS, FEEDBACK, METRICS, REQUESTED, REWARDED

    reg = registry.client(ctx.stack["registry"])
    out = {}
    for spec in (REQUESTED, COMPLETED, FEEDBACK, EVALUATIONS, REWARDED, METRICS):
        topic = replace(spec, name=spec.name + suffix)
        ensure_topics(ctx.stack["kafka"], only=[topic])
        registry.register(reg, topic)
        out[spec.name] = (topic, TopicSerde(reg, topic))
    return out


def _completed(i: int, at: Any) -> dict[str, Any]:
    from schemas.events import CompletionStatus, InferenceCompleted

    return InferenceCompleted(
        producer="bench",
        request_id=f"r{i}",
        occurred_at=at,
        model="smollm2",
        version="v1" if i % 2 else "v2",
        status=CompletionStatus.ok if i % 50 else CompletionStatus.error,
        completion="The answer is 42.",
        latency_ms=50.0 + i % 700,
        ttft_ms=5.0 + i % 40,
        prompt_tokens=30,
        completion_tokens=8,
        tokens_per_s=40.0,
        cost=Decimal("0.000012"),
    ).to_avro()


def _worker_rate(ctx: Context, suffix: str, agents: str, stat: str, total: int) -> float:
    """Events/s of one real `rftloop streams` worker running ``agents`` over records already waiting:
    from its first progress on ``stat`` (its /stats/ page) to ``total``."""
    port = free_port()
    env = {
        **os.environ,
        "RFTLOOP_KAFKA_BOOTSTRAP_SERVERS": ctx.stack["kafka"].bootstrap_servers,
        "RFTLOOP_REGISTRY_URL": ctx.stack["registry"].url,
        "RFTLOOP_STREAMS_APP_ID": f"bench-streams{suffix}",
        "RFTLOOP_STREAMS_TOPIC_SUFFIX": suffix,
        "RFTLOOP_STREAMS_AGENTS": agents,
        "RFTLOOP_STREAMS_EVALUATORS": "number_match",
        "RFTLOOP_STREAMS_DATA_DIR": str(Path(ctx.stack["local"].state_dir) / f"faust{suffix}"),
    }
    log = open(Path(ctx.stack["local"].state_dir) / f"streams{suffix}.log", "wb")  # noqa: SIM115 - outlives the block
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "streams", "--web-port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    first: tuple[float, int] | None = None
    done_at = None
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats/", timeout=2) as r:
                    n = json.loads(r.read())[stat]
            except OSError:
                time.sleep(0.2)
                continue
            if n and first is None:
                first = (time.monotonic(), n)
            if n >= total:
                done_at = time.monotonic()
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        log.close()
    if first is None or done_at is None:
        raise RuntimeError(f"the worker did not reach {stat}={total}; see {log.name}")
    return (total - first[1]) / (done_at - first[0])


def events_per_s(ctx: Context) -> list[Result]:
    from confluent_kafka import TopicPartition

    from infra.kafka import consumer, produce, producing
    from schemas.events import utcnow
    from schemas.topics import COMPLETED
    from streams.buckets import PLAIN, check_completed
    from streams.windows import Accumulator

    suffix = f"-bench{uuid.uuid4().hex[:6]}"
    topics = _topics(ctx, suffix)
    topic, serde = topics[COMPLETED.name]
    start = utcnow() - timedelta(milliseconds=N)
    with producing(ctx.stack["kafka"]) as p:
        for i in range(N):  # one event a millisecond: the windows close as in traffic of 1,000/s
            produce(p, topic.name, f"r{i}", serde.encode(_completed(i, start + timedelta(milliseconds=i))))
    print(f"bench: {N:,} InferenceCompleted on {topic.name}", flush=True)

    ours = _worker_rate(ctx, suffix, "metrics", "bucketed", N)

    # -- peer: plain consumer loop, same decode and the same accumulators
    c = consumer(ctx.stack["kafka"], f"bench-plain{suffix}", **{"fetch.max.bytes": 64 * 1024 * 1024})
    c.assign([TopicPartition(topic.name, p, 0) for p in range(ctx.stack["kafka"].partitions)])
    seen = 0
    t0 = None
    buckets: dict[tuple[str, str, int], Accumulator] = {}
    while seen < N:
        for msg in c.consume(5000, 1.0):
            if msg.error():
                continue
            if t0 is None:
                t0 = time.perf_counter()
            rec = serde.decode(msg.value(), plain=PLAIN)  # as stage 1 decodes
            check_completed(rec)
            k = (rec["model"], rec["version"], rec["occurred_at"] // 1000 // 10 * 10)
            acc = buckets.get(k)
            if acc is None:
                acc = buckets[k] = Accumulator()
            acc.add_completed(rec)
            seen += 1
    plain = N / (time.perf_counter() - (t0 or time.perf_counter()))
    c.close()
    return [
        Result(
            name="streams.events_per_s",
            value=ours,
            unit="events/s",
            peer="plain confluent-kafka consumer loop, same decode and aggregates",
            peer_value=plain,
            goal="≥ 20,000 events/s per worker and ≥ 0.3× the plain loop",
            goal_ratio=0.3,
            goal_value=20_000,
            method=(
                f"{N:,} InferenceCompleted waiting on a 3-partition topic, one per millisecond of event time "
                f"({N // 1000} s: {N // 10_000} tumbling 10 s windows per model version, as 1,000 events/s of "
                "traffic would be); ours = one `rftloop streams` worker "
                "(metrics agents only: stage 1 = a confluent-kafka loop committing each batch's partials and "
                "offsets in one Kafka transaction, inside the faust-streaming 0.15.3 worker) from its first "
                "committed batch to the last, read from its /stats/ page; peer = one Python loop over "
                "consume(5000) with the same TopicSerde.decode (event_id and occurred_at left plain, as "
                "stage 1 reads them), check and Accumulator, no produce, no commit"
            ),
        )
    ]


JOIN_REQUESTS = 20_000


def _join_inputs(i: int, at: Any) -> list[tuple[str, Any]]:
    """One request's three join inputs: requested, completed, a thumbs feedback."""
    from schemas.events import (
        Endpoint,
        FeedbackKind,
        FeedbackSource,
        FeedbackSubmitted,
        InferenceCompleted,
        InferenceRequested,
    )
    from schemas.topics import COMPLETED, FEEDBACK, REQUESTED

    rid = f"j{i}"
    return [
        (
            REQUESTED.name,
            InferenceRequested(
                producer="bench",
                request_id=rid,
                occurred_at=at,
                model="smollm2",
                version="v1",
                endpoint=Endpoint.chat,
                prompt=f"What is {i} + 1? Answer with the number.",
                params={"reference": str(i + 1)},
            ),
        ),
        (COMPLETED.name, InferenceCompleted.model_validate({**_completed(i, at), "request_id": rid})),
        (
            FEEDBACK.name,
            FeedbackSubmitted(
                producer="bench",
                request_id=rid,
                occurred_at=at,
                model="smollm2",
                version="v1",
                kind=FeedbackKind.thumbs,
                value=1.0 if i % 2 else -1.0,
                source=FeedbackSource.user,
            ),
        ),
    ]


def join_events_per_s(ctx: Context) -> list[Result]:
    from confluent_kafka import TopicPartition

    from infra.kafka import consumer, produce, producing
    from schemas.events import RewardedSample, utcnow
    from schemas.topics import COMPLETED, EVALUATIONS, FEEDBACK, REQUESTED, REWARDED
    from streams.join import JoinState

    suffix = f"-benchjoin{uuid.uuid4().hex[:6]}"
    topics = _topics(ctx, suffix)
    at = utcnow()
    total = 3 * JOIN_REQUESTS
    with producing(ctx.stack["kafka"]) as p:
        for i in range(JOIN_REQUESTS):
            for base, event in _join_inputs(i, at):
                topic, serde = topics[base]
                produce(p, topic.name, event.request_id, serde.encode_event(event))
    print(f"bench: {JOIN_REQUESTS:,} requests × (requested, completed, feedback) waiting", flush=True)

    ours = _worker_rate(ctx, suffix, "join", "joined", total)

    # -- peer: one loop, the same decode, JoinState (JSON round trip per event) and output encoding
    by_topic = {topic.name: serde for topic, serde in topics.values()}
    evaluators = ["number_match"]  # the join only names them; scoring is the evaluate stage's
    c = consumer(ctx.stack["kafka"], f"bench-plainjoin{suffix}", **{"fetch.max.bytes": 64 * 1024 * 1024})
    c.assign(
        [
            TopicPartition(topic.name, p, 0)
            for base, (topic, _) in topics.items()
            if base in (REQUESTED.name, COMPLETED.name, FEEDBACK.name)
            for p in range(ctx.stack["kafka"].partitions)
        ]
    )
    table: dict[str, Any] = {}
    seen, t0 = 0, None
    while seen < total:
        for msg in c.consume(5000, 1.0):
            if msg.error():
                continue
            if t0 is None:
                t0 = time.perf_counter()
            event = by_topic[msg.topic()].decode_event(msg.value())
            rid = event.request_id
            current = table.get(rid)
            state = JoinState.from_json(current) if current else JoinState(msg.partition() or 0, 0.0)
            for out in state.apply(event, evaluators, time.time(), 86_400):
                base = REWARDED.name if isinstance(out, RewardedSample) else EVALUATIONS.name
                topics[base][1].encode_event(out)
            table[rid] = state.to_json()
            seen += 1
    plain = total / (time.perf_counter() - (t0 or time.perf_counter()))
    c.close()
    return [
        Result(
            name="streams.join_events_per_s",
            value=ours,
            unit="events/s",
            peer="plain confluent-kafka loop, same decode, JoinState and output encoding",
            peer_value=plain,
            goal="report (the capacity model costs the join's inputs at this rate)",
            method=(
                f"{JOIN_REQUESTS:,} requests × (requested, completed, thumbs feedback) waiting on 3-partition "
                "topics; ours = one `rftloop streams` worker (the join only: a transactional confluent-kafka "
                "loop, state changelogged, RewardedSample and EvaluationRequested out, one transaction per "
                "batch; the evaluate stage, which scores outside the join, does not run) from its first "
                "joined event to the last, "
                "read from its /stats/ page; peer = one Python loop over consume(5000) with the same "
                "TopicSerde.decode_event, JoinState.apply and output encoding, a dict for the table, no "
                "produce, no changelog, no commit"
            ),
        )
    ]


EVAL_REQUESTS = 20_000


def evaluate_events_per_s(ctx: Context) -> list[Result]:
    """The evaluate stage: what scoring in the evaluators' own process (the deadline's price) costs
    against scoring in the loop's own thread."""
    from confluent_kafka import TopicPartition

    from infra import rewards
    from infra.kafka import consumer, produce, producing
    from schemas.events import CompletionChoice, EvaluationRequested, utcnow
    from schemas.topics import EVALUATIONS, FEEDBACK
    from streams import evaluate

    suffix = f"-benchevaluate{uuid.uuid4().hex[:6]}"
    topics = _topics(ctx, suffix)
    topic, serde = topics[EVALUATIONS.name]
    at = utcnow()
    with producing(ctx.stack["kafka"]) as p:
        for i in range(EVAL_REQUESTS):
            event = EvaluationRequested(
                producer="bench",
                request_id=f"e{i}",
                occurred_at=at,
                model="smollm2",
                version="v1",
                prompt=f"What is {i} + 1? Answer with the number.",
                reference=str(i + 1),
                choices=[
                    CompletionChoice(index=0, completion=f"The answer is {i + i % 2}.", completion_tokens=6)
                ],
            )
            produce(p, topic.name, event.request_id, serde.encode_event(event))
    print(f"bench: {EVAL_REQUESTS:,} EvaluationRequested waiting on {topic.name}", flush=True)

    ours = _worker_rate(ctx, suffix, "evaluate", "evaluator_scores", EVAL_REQUESTS)

    # -- peer: one loop, the same decode, the evaluator called in this thread, the same encoding
    evaluators = rewards.resolve(["number_match"])
    fb_serde = topics[FEEDBACK.name][1]
    c = consumer(ctx.stack["kafka"], f"bench-plainevaluate{suffix}", **{"fetch.max.bytes": 64 * 1024 * 1024})
    c.assign([TopicPartition(topic.name, n, 0) for n in range(ctx.stack["kafka"].partitions)])
    seen, t0 = 0, None
    while seen < EVAL_REQUESTS:
        for msg in c.consume(5000, 1.0):
            if msg.error():
                continue
            if t0 is None:
                t0 = time.perf_counter()
            req = serde.decode_event(msg.value())
            for score in evaluate.scores(req, evaluators):
                fb_serde.encode_event(score)
            seen += 1
    plain = EVAL_REQUESTS / (time.perf_counter() - (t0 or time.perf_counter()))
    c.close()
    return [
        Result(
            name="streams.evaluate_events_per_s",
            value=ours,
            unit="responses/s",
            peer="plain confluent-kafka loop, same decode, evaluator in-thread (no deadline), same encoding",
            peer_value=plain,
            goal="report (the price of scoring in a process that can be killed at a deadline)",
            method=(
                f"{EVAL_REQUESTS:,} EvaluationRequested (one choice each) waiting on a 3-partition topic; "
                "ours = one `rftloop streams` worker (the evaluate stage only: a transactional "
                "confluent-kafka loop, number_match in the evaluators' spawned process with a 2 s deadline "
                "per response, FeedbackSubmitted out, one transaction per batch) from its first score to "
                "the last, read from its /stats/ page; peer = one Python loop over consume(5000) with the "
                "same TopicSerde.decode_event, rewards.run in the loop's thread and the same encoding, no "
                "produce, no commit"
            ),
        )
    ]


RATE = 1000
SECONDS = 60


def freshness_ms(ctx: Context) -> list[Result]:
    from consumers.clickhouse_sink.sink import DEFAULT_BATCH, ClickHouseSink
    from infra import registry
    from infra.clickhouse.client import connect
    from infra.kafka import produce, producing
    from schemas.events import utcnow
    from schemas.topics import COMPLETED

    suffix = f"-fresh{uuid.uuid4().hex[:6]}"
    topic, serde = _topics(ctx, suffix)[COMPLETED.name]
    ch = ctx.stack["clickhouse"].model_copy(update={"database": f"bench_fresh_{uuid.uuid4().hex[:6]}"})
    sink = ClickHouseSink(
        ctx.stack["kafka"],
        ch,
        registry.client(ctx.stack["registry"]),
        topics=[topic],
        group_id=f"bench-fresh{suffix}",
    )
    runner = threading.Thread(target=sink.run, daemon=True)
    runner.start()
    time.sleep(5)  # migrations and group join are start-up, not freshness
    total = RATE * SECONDS
    print(f"bench: producing {RATE}/s for {SECONDS} s with the sink running ...", flush=True)
    with producing(ctx.stack["kafka"]) as p:
        start = time.perf_counter()
        for i in range(total):
            due = start + i / RATE
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            produce(p, topic.name, f"r{i}", serde.encode(_completed(i, utcnow())))
            p.poll(0)
    deadline = time.monotonic() + 60
    while sink.stats.inserted < total and time.monotonic() < deadline:
        time.sleep(0.1)
    sink.stop()
    runner.join(30)
    client = connect(ch)
    ((p50, p99, n),) = client.query(
        "SELECT quantileExact(0.5)(lag), quantileExact(0.99)(lag), count() FROM "
        "(SELECT toUnixTimestamp64Milli(_inserted_at) - toUnixTimestamp64Milli(occurred_at) AS lag "
        "FROM inference_completed FINAL)"
    ).result_rows
    client.command(f"DROP DATABASE {ch.database}")
    if n != total:
        raise RuntimeError(f"{n} of {total} rows arrived")
    method = (
        f"{total:,} InferenceCompleted produced at {RATE}/s for {SECONDS} s (idempotent producer, linger 5 ms), "
        f"each stamped with occurred_at when produced; the ClickHouse sink (defaults: batches of ≤ {DEFAULT_BATCH:,} rows "
        "or 1 s) into the embedded server; ClickHouse stamps `_inserted_at` when the row is written; lag = "
        "_inserted_at − occurred_at over every row (exact quantiles). Peer: Langfuse documents that traces "
        "appear within seconds, up to ~10 minutes (not measured here)"
    )
    return [
        Result(
            name="e2e.freshness_ms.p99",
            value=float(p99),
            unit="ms",
            peer="Langfuse: seconds, up to ~10 min (documented, not measured)",
            peer_value=None,
            goal="p99 ≤ 2,000 ms at 1,000 events/s",
            goal_value=2000,
            higher_is_better=False,
            method=method,
        ),
        Result(
            name="e2e.freshness_ms.p50",
            value=float(p50),
            unit="ms",
            peer="Langfuse: seconds, up to ~10 min (documented, not measured)",
            peer_value=None,
            goal="(reported with the p99)",
            higher_is_better=False,
            method=method,
        ),
    ]

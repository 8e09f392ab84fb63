"""Helpers for the streams tests: real faust workers as subprocesses, event builders, readers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition

from infra.kafka import consumer
from infra.serde import TopicSerde
from infra.settings import KafkaSettings
from schemas.events import (
    CompletionStatus,
    Endpoint,
    FeedbackKind,
    FeedbackSource,
    FeedbackSubmitted,
    InferenceCompleted,
    InferenceRequested,
    MetricsWindow,
)

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def worker(
    env: dict[str, str], log_path: Path, extra: dict[str, str] | None = None, web_port: int = 0
) -> Iterator[subprocess.Popen[bytes]]:
    """One `rftloop streams` worker process (its web pages on ``web_port``, none with 0); killed
    (SIGKILL: faust may hang on SIGTERM) on exit."""
    full = {**os.environ, **env, **(extra or {})}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "streams", "--web-port", str(web_port)],
            cwd=ROOT,
            env=full,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def request_events(
    rid: str,
    *,
    version: str,
    at: datetime,
    ok: bool = True,
    latency_ms: float = 100.0,
    ttft_ms: float = 10.0,
    completion: str = "42",
    reference: str | None = None,
    opt_out: bool = False,
    prompt_tokens: int = 20,
    completion_tokens: int = 4,
    cost: str = "0.000010000",
) -> tuple[InferenceRequested, InferenceCompleted]:
    params = {"reference": reference} if reference is not None else {}
    req = InferenceRequested(
        producer="test",
        request_id=rid,
        occurred_at=at,
        model="m",
        version=version,
        endpoint=Endpoint.chat,
        prompt=f"question {rid}",
        params=params,
        training_opt_out=opt_out,
    )
    done = InferenceCompleted(
        producer="test",
        request_id=rid,
        occurred_at=at,
        model="m",
        version=version,
        status=CompletionStatus.ok if ok else CompletionStatus.error,
        error_kind=None if ok else "engine",
        completion=completion if ok else "",
        latency_ms=latency_ms,
        ttft_ms=ttft_ms if ok else None,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens if ok else 0,
        tokens_per_s=completion_tokens / (latency_ms / 1000) if ok else None,
        cost=Decimal(cost),
        training_opt_out=opt_out,
    )
    return req, done


def thumbs(rid: str, *, version: str, at: datetime, up: bool) -> FeedbackSubmitted:
    return FeedbackSubmitted(
        producer="test",
        request_id=rid,
        occurred_at=at,
        model="m",
        version=version,
        kind=FeedbackKind.thumbs,
        value=1.0 if up else -1.0,
        source=FeedbackSource.user,
    )


def read_topic(kafka: KafkaSettings, topic: str, serde: TopicSerde, idle_s: float = 2.0) -> list[Any]:
    """Every event on ``topic`` from the beginning until nothing arrives for ``idle_s``."""
    c = consumer(kafka, f"reader-{uuid.uuid4().hex[:8]}", **{"auto.offset.reset": "earliest"})
    md = c.list_topics(topic, timeout=10).topics[topic]
    c.assign([TopicPartition(topic, p, 0) for p in md.partitions])
    out = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle_s:
            msg = c.poll(0.2)
            if msg is None or msg.error():
                continue
            out.append(serde.decode_event(msg.value()))
            last = time.monotonic()
    finally:
        c.close()
    return out


def count_records(kafka: KafkaSettings, topic: str, isolation: str, idle_s: float = 2.0) -> int:
    """How many records of ``topic`` a consumer with ``isolation`` (read_committed /
    read_uncommitted) reads from the beginning until nothing arrives for ``idle_s``."""
    c = consumer(kafka, f"counter-{uuid.uuid4().hex[:8]}", **{"isolation.level": isolation})
    md = c.list_topics(topic, timeout=10).topics[topic]
    c.assign([TopicPartition(topic, p, 0) for p in md.partitions])
    n, last = 0, time.monotonic()
    try:
        while time.monotonic() - last < idle_s:
            msg = c.poll(0.2)
            if msg is not None and not msg.error():
                n, last = n + 1, time.monotonic()
    finally:
        c.close()
    return n


WindowFigures = tuple[int, int, int, int, int, int, Decimal]


def window_figures(w: MetricsWindow) -> WindowFigures:
    """What a window says that can be recomputed exactly from the raw events."""
    return (w.requests, w.errors, w.thumbs_up, w.thumbs_down, w.prompt_tokens, w.completion_tokens, w.cost_total)


def recompute_tumbling(
    completed: list[InferenceCompleted], feedback: list[FeedbackSubmitted], size_s: int
) -> dict[datetime, WindowFigures]:
    """Tumbling windows recomputed from the raw events (each event in the window of its occurred_at)."""
    acc: dict[datetime, list[Any]] = {}

    def row(at: datetime) -> list[Any]:
        start = datetime.fromtimestamp(int(at.timestamp()) // size_s * size_s, UTC)
        return acc.setdefault(start, [0, 0, 0, 0, 0, 0, Decimal(0)])

    for c in completed:
        r = row(c.occurred_at)
        r[0] += 1
        r[1] += c.status != CompletionStatus.ok
        r[4] += c.prompt_tokens
        r[5] += c.completion_tokens
        r[6] += c.cost
    for f in feedback:
        if f.kind == FeedbackKind.thumbs and f.value is not None:
            row(f.occurred_at)[2 if f.value > 0 else 3] += 1
    return {start: (r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for start, r in acc.items()}


def utc(ts: float) -> datetime:
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


def streams_env(stack: Any, unique: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **stack.env(),
        "RFTLOOP_STREAMS_APP_ID": f"streams-{unique}",
        "RFTLOOP_STREAMS_TOPIC_SUFFIX": f"-{unique}",
        "RFTLOOP_STREAMS_WINDOWS": "tumbling:2,hopping:4:2",
        "RFTLOOP_STREAMS_LATENESS_S": "3",
        "RFTLOOP_STREAMS_EVALUATORS": "number_match",
        "RFTLOOP_STREAMS_DATA_DIR": str(tmp_path / "faust"),
        "RFTLOOP_KAFKA_PARTITIONS": "3",
        **extra,
    }


def worker_stats(web_port: int) -> dict[str, int]:
    """A running worker's counters (its /stats/ page)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/stats/", timeout=10) as r:
        stats: dict[str, int] = json.loads(r.read())
    return stats


def wait_for_log(log: Path, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in (log.read_text(errors="replace") if log.exists() else ""):
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {log} after {timeout_s}s")


def wait_ready(log: Path, proc: Any, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "Ready" in text:
            return
        time.sleep(0.5)
    raise AssertionError(f"worker not ready after {timeout_s}s:\n{log.read_text(errors='replace')[-3000:]}")

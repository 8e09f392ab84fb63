"""Faults survived with real processes, killed for real (a first scenario of the reliability suite)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from infra.clickhouse.client import connect
from infra.kafka import ensure_topics, produce, producing
from schemas.topics import ALL_TOPICS, COMPLETED
from tests.integration.streams_support import request_events, utc

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
N = 20_000


@pytest.mark.slow
def test_sink_killed_mid_batch_loses_nothing_and_shows_no_duplicates(
    stack: Any, event_topic: Any, ch_database: str, unique: str, tmp_path: Path, record_figures: Any
) -> None:
    topic, serde = event_topic(COMPLETED)
    now = time.time()
    with producing(stack.kafka) as p:
        for i in range(N):
            _, done = request_events(f"k{i}", version="v1", at=utc(now))
            produce(p, topic.name, done.request_id, serde.encode_event(done))
    env = {**os.environ, **stack.env(), "RFTLOOP_CLICKHOUSE_DATABASE": ch_database}
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "sink",
        f"--topic-suffix=-{unique}",
        "--group",
        f"sink-{unique}",
        "--batch-size",
        "2000",
        "--batch-seconds",
        "0.5",
    ]
    client = connect(stack.clickhouse, database=ch_database)

    def rows(sql: str) -> int:
        try:
            return int(client.query(sql).result_rows[0][0])
        except Exception:  # the table appears with the sink's first migration
            return 0

    log = open(tmp_path / "sink.log", "wb")  # noqa: SIM115
    first = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while rows("SELECT count() FROM inference_completed") < N // 4 and time.monotonic() < deadline:
        assert first.poll() is None, (tmp_path / "sink.log").read_text(errors="replace")[-2000:]
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # mid-stream: some rows inserted but not yet committed
    first.wait(10)
    killed_at = rows("SELECT count() FROM inference_completed")
    assert 0 < killed_at < N, f"the kill did not land mid-stream ({killed_at} rows)"

    second = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while rows("SELECT uniqExact(event_id) FROM inference_completed") < N and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
        log.close()
    assert rows("SELECT uniqExact(event_id) FROM inference_completed") == N  # none lost
    assert rows("SELECT count() FROM inference_completed FINAL") == N  # none counted twice by readers
    written = rows("SELECT count() FROM inference_completed")
    assert written >= N  # replayed rows may be written again; ReplacingMergeTree collapses them
    record_figures(
        "ClickHouse sink kill -9 mid-batch, restarted",
        produced=N,
        rows_when_killed=killed_at,
        rows_written=written,
        stored_after_dedup=N,
        lost=0,
        duplicated=0,
    )


def _assigned(log: Path, topic: str) -> bool:
    """Whether the sink writing ``log`` was last assigned a partition of ``topic``."""
    lines = [x for x in log.read_text(errors="replace").splitlines() if "sink: assigned" in x]
    return bool(lines) and f"{topic}[" in lines[-1]


def test_two_sinks_in_one_group_share_the_partitions_and_store_each_event_once(
    stack: Any, event_topic: Any, ch_database: str, unique: str, tmp_path: Path, record_figures: Any
) -> None:
    """Two `rftloop sink` processes started together on a fresh database (both run the migrations),
    one consumer group: each takes partitions, and every event is stored once."""
    n = 12_000
    topic, serde = event_topic(COMPLETED)
    ensure_topics(stack.kafka, only=[replace(t, name=f"{t.name}-{unique}") for t in ALL_TOPICS])
    env = {**os.environ, **stack.env(), "RFTLOOP_CLICKHOUSE_DATABASE": ch_database}
    cmd = [sys.executable, "-m", "cli.main", "sink", f"--topic-suffix=-{unique}", "--group", f"two-{unique}"]
    logs = [tmp_path / f"sink{i}.log" for i in range(2)]
    procs = []
    for path in logs:
        with open(path, "wb") as log:
            procs.append(
                subprocess.Popen(
                    cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
    client = connect(stack.clickhouse, database=ch_database)

    def stored() -> int:
        try:
            return int(client.query("SELECT uniqExact(event_id) FROM inference_completed").result_rows[0][0])
        except Exception:  # the table appears with the first migration
            return 0

    try:
        # both hold partitions before the events arrive, so the group has split them
        deadline = time.monotonic() + 90
        while not all(_assigned(path, topic.name) for path in logs) and time.monotonic() < deadline:
            for proc, path in zip(procs, logs, strict=True):
                assert proc.poll() is None, path.read_text(errors="replace")[-3000:]
            time.sleep(0.3)
        now = time.time()
        with producing(stack.kafka) as p:
            for i in range(n):
                _, done = request_events(f"two{i}", version="v1", at=utc(now))
                produce(p, topic.name, done.request_id, serde.encode_event(done))
        deadline = time.monotonic() + 120
        while stored() < n and time.monotonic() < deadline:
            for proc, path in zip(procs, logs, strict=True):
                assert proc.poll() is None, path.read_text(errors="replace")[-3000:]
            time.sleep(0.3)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
    inserted = []
    for path in logs:
        line = [x for x in path.read_text(errors="replace").splitlines() if x.startswith("sink stopped:")]
        assert line, path.read_text(errors="replace")[-3000:]
        inserted.append(int(line[-1].split("inserted ")[1].split(",")[0]))
    assert stored() == n
    assert int(client.query("SELECT count() FROM inference_completed FINAL").result_rows[0][0]) == n
    assert all(x > 0 for x in inserted), f"one sink got no partition: inserted {inserted}"
    record_figures(
        "two ClickHouse sinks in one consumer group, started together on a fresh database",
        produced=n,
        inserted_per_sink=inserted,
        stored=n,
        lost=0,
        duplicated=0,
    )

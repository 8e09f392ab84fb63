"""Faults survived with real processes, killed for real (a first scenario of the reliability suite)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from infra.clickhouse.client import connect
from infra.kafka import produce, producing
from schemas.topics import COMPLETED
from tests.integration.streams_support import request_events, utc

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
N = 20_000


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

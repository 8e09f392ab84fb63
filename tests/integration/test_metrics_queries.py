"""`rftloop metrics`, the JSON endpoint and the README's SQL, on the embedded ClickHouse, vs Python aggregates."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cli.api import create_app
from infra.clickhouse.client import connect
from infra.clickhouse.migrate import migrate
from infra.clickhouse.tables import event_table
from schemas.events import (
    FeedbackKind,
    FeedbackSource,
    FeedbackSubmitted,
    ModelVersionEvent,
    RewardedSample,
    RewardSource,
    VersionEventKind,
)
from schemas.topics import COMPLETED, FEEDBACK, METRICS, REWARDED, VERSIONS
from streams.windows import Accumulator, parse_windows
from tests.integration.streams_support import request_events, utc

ROOT = Path(__file__).resolve().parents[2]


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


@pytest.fixture
def filled(stack: Any, ch_database: str) -> dict[str, Any]:
    """Two versions' responses, thumbs and rewarded samples in a fresh database (some rows twice)."""
    client = connect(stack.clickhouse, database=ch_database)
    migrate(client, ch_database)
    now = time.time()
    completed, feedback, samples = [], [], []
    for i in range(400):
        version = "v1" if i % 2 else "v2"
        _, done = request_events(
            f"r{i}",
            version=version,
            at=utc(now - 60 + i * 0.1),
            ok=i % 9 != 0,
            latency_ms=10.0 + (i * 7919) % 1000,
            cost=f"0.{i:09d}",
        )
        completed.append(done)
        if i % 3 == 0:
            feedback.append(
                FeedbackSubmitted(
                    producer="t",
                    request_id=f"r{i}",
                    occurred_at=utc(now - 30),
                    model="m",
                    version=version,
                    kind=FeedbackKind.thumbs,
                    value=1.0 if i % 2 == 0 else -1.0,
                    source=FeedbackSource.user,
                )
            )
        if i % 5 < 2:
            for n, reward in enumerate((0.0, 1.0 if i % 7 < 3 else -1.0)):  # the later sample supersedes
                samples.append(
                    RewardedSample(
                        producer="t",
                        request_id=f"r{i}",
                        occurred_at=utc(now - 20 + n),
                        model="m",
                        version=version,
                        prompt="p",
                        completion="c",
                        reward=reward,
                        reward_sources=[
                            RewardSource(source=FeedbackSource.user, kind="thumbs", value=reward)
                        ],
                    )
                )
    for spec, events in ((COMPLETED, completed), (FEEDBACK, feedback), (REWARDED, samples)):
        table = event_table(spec)
        rows = [table.row(e.to_avro(), 0, n) for n, e in enumerate(events)]
        client.insert(table.name, rows + rows[:50], column_names=table.column_names)  # replayed rows
    return {"db": ch_database, "completed": completed, "feedback": feedback, "samples": samples}


def expected(filled: dict[str, Any], version: str) -> dict[str, Any]:
    done = [c for c in filled["completed"] if c.version == version]
    ok = [c for c in done if c.status == "ok"]
    fb = [f for f in filled["feedback"] if f.version == version]
    latest = {s.request_id: s for s in filled["samples"] if s.version == version}  # later ones overwrite
    up = sum(1 for f in fb if f.value > 0)
    return {
        "requests": len(done),
        "errors": len(done) - len(ok),
        "latency": [exact_quantile([c.latency_ms for c in ok], q) for q in (0.5, 0.95, 0.99)],
        "cost": sum((c.cost for c in done), Decimal(0)),
        "thumbs_up_rate": up / len(fb),
        "reward_mean": sum(s.reward for s in latest.values()) / len(latest),
        "rewarded": len(latest),
        "coverage": len(fb) / len(done),
    }


def check(row: dict[str, Any], want: dict[str, Any]) -> None:
    assert row["requests"] == want["requests"]
    assert row["errors"] == want["errors"]
    for got, q in zip(
        (row["latency_p50_ms"], row["latency_p95_ms"], row["latency_p99_ms"]), want["latency"], strict=True
    ):
        assert got == pytest.approx(q, rel=0.05)  # ClickHouse's quantile() is a sampled estimate
    assert row["cost"] == pytest.approx(float(want["cost"]))
    assert row["thumbs_up_rate"] == pytest.approx(want["thumbs_up_rate"])
    assert row["reward_mean"] == pytest.approx(want["reward_mean"])
    assert row["rewarded"] == want["rewarded"]
    assert row["feedback_coverage"] == pytest.approx(want["coverage"])


def test_metrics_cli_json_equals_python_aggregates(stack: Any, filled: dict[str, Any]) -> None:
    env = {**os.environ, **stack.env(), "RFTLOOP_CLICKHOUSE_DATABASE": filled["db"]}
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "metrics", "--since", "15m", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    rows = {r["version"]: r for r in json.loads(out.stdout)}
    assert set(rows) == {"v1", "v2"}
    for version, row in rows.items():
        check(row, expected(filled, version))
    table = subprocess.run(
        [sys.executable, "-m", "cli.main", "metrics", "--since", "1h"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0 and "v1" in table.stdout and "p95 ms" in table.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "cli.main", "metrics", "--since", "soon"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "expected a duration" in bad.stderr


def test_json_endpoint_serves_the_same_rows_and_refuses_bad_parameters(
    stack: Any, filled: dict[str, Any]
) -> None:
    settings = stack.clickhouse.model_copy(update={"database": filled["db"]})
    http = TestClient(create_app(settings))
    body = http.get("/api/metrics", params={"since": "15m"}).json()
    for row in body["versions"]:
        check(row, expected(filled, row["version"]))
    series = http.get("/api/series", params={"since": "1h", "step": 60}).json()
    assert sum(p["requests"] for p in series["traffic"]) == 400
    assert sum(p["rewarded"] for p in series["rewards"]) == len({s.request_id for s in filled["samples"]})
    assert http.get("/api/metrics", params={"since": "yesterday"}).status_code == 400
    assert http.get("/api/series", params={"step": 0}).status_code == 422
    assert http.get("/healthz").json()["ok"] is True


def test_readme_sql_runs_as_written(stack: Any, filled: dict[str, Any]) -> None:
    """Every ```sql block of the README runs against the embedded server (database `rftloop`)."""
    blocks = re.findall(r"```sql\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 5
    client = connect(stack.clickhouse, database="default")
    migrate(client, "rftloop")
    for table in ("inference_completed", "feedback_submitted", "rewarded_samples"):
        client.command(f"INSERT INTO rftloop.{table} SELECT * FROM {filled['db']}.{table}")
    specs = parse_windows("tumbling:60")
    acc = Accumulator()
    for c in filled["completed"][:50]:
        acc.add_completed(c.to_avro())
    window = acc.to_event(
        event_id=uuid.uuid4(),
        producer="t",
        model="m",
        version="v1",
        spec=specs[0],
        start_s=int(time.time()) // 60 * 60 - 60,
        final=True,
    )
    published = ModelVersionEvent(
        producer="t",
        kind=VersionEventKind.published,
        model="m",
        version="v1",
        decision="canary",
        traffic_share=0.1,
        eval={"accuracy": 0.4},
    )
    for spec, event in ((METRICS, window), (VERSIONS, published)):
        table = event_table(spec)
        row = table.row(event.to_avro(), 0, 0)
        client.insert(f"rftloop.{table.name}", [row], column_names=table.column_names)
    for sql in blocks:
        result = client.query(sql)
        assert result.result_rows, f"no rows from:\n{sql}"

"""The dashboard page renders its charts with data in headless Chromium (Debian's chromium)."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from typing import Any

import pytest
import uvicorn

from cli.api import create_app
from infra.clickhouse.client import connect
from infra.clickhouse.migrate import migrate
from infra.clickhouse.tables import event_table
from infra.local.process import free_port
from schemas.events import (
    FeedbackSource,
    ModelVersionEvent,
    RewardedSample,
    RewardSource,
    VersionEventKind,
)
from schemas.topics import COMPLETED, REWARDED, VERSIONS
from tests.integration.streams_support import request_events, utc

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (`make browser` installs Debian's chromium)"
)
def test_dashboard_draws_every_chart_with_data(stack: Any, ch_database: str, tmp_path: Any) -> None:
    client = connect(stack.clickhouse, database=ch_database)
    migrate(client, ch_database)
    now = time.time()
    completed, samples = [], []
    for i in range(120):
        version = "v1" if i % 2 else "base"
        at = utc(now - 300 + i * 2)
        completed.append(request_events(f"r{i}", version=version, at=at, latency_ms=100.0 + i)[1])
        samples.append(
            RewardedSample(
                producer="t",
                request_id=f"r{i}",
                occurred_at=at,
                model="m",
                version=version,
                prompt="p",
                completion="c",
                reward=1.0 if i % 3 else -1.0,
                reward_sources=[RewardSource(source=FeedbackSource.user, kind="thumbs", value=1.0)],
            )
        )
    events = [
        ModelVersionEvent(
            producer="trainer",
            kind=VersionEventKind.published,
            model="m",
            version="v1",
            parent_version="base",
            method="kto",
            decision="canary",
            reasons=["gate passed"],
            eval={"candidate_accuracy": 0.45, "incumbent_accuracy": 0.3},
            occurred_at=utc(now - 400),
        ),
        ModelVersionEvent(
            producer="trainer",
            kind=VersionEventKind.published,
            model="m",
            version="v2",
            parent_version="v1",
            method="grpo",
            decision="canary",
            reasons=["gate passed"],
            eval={
                "candidate_accuracy": 0.6,
                "incumbent_accuracy": 0.45,
                "gain_lower": 0.05,
                "gain_upper": 0.25,
                "candidate_latency_ms": 105.0,
                "incumbent_latency_ms": 100.0,
            },
            occurred_at=utc(now - 200),
        ),
        ModelVersionEvent(
            producer="judge",
            kind=VersionEventKind.rolled_back,
            model="m",
            version="v1",
            decision="rollback",
            reasons=["worse: positive feedback 0.2 vs 0.6"],
            actor="canary-judge",
            occurred_at=utc(now - 10),
        ),
    ]
    for spec, rows in ((COMPLETED, completed), (REWARDED, samples), (VERSIONS, events)):
        table = event_table(spec)
        client.insert(
            table.name,
            [table.row(e.to_avro(), 0, n) for n, e in enumerate(rows)],
            column_names=table.column_names,
        )

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(stack.clickhouse.model_copy(update={"database": ch_database})),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        out = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
                f"--user-data-dir={tmp_path / 'chrome'}",
                "--virtual-time-budget=8000",
                "--dump-dom",
                f"http://127.0.0.1:{port}/",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.should_exit = True
        thread.join(10)
    dom = out.stdout
    assert 'data-loaded="yes"' in dom, out.stderr[-2000:]
    for chart in ("chart-reward", "chart-latency", "chart-ttft", "chart-traffic", "chart-cost"):
        svg = re.search(rf'<svg id="{chart}".*?</svg>', dom, re.S)
        assert svg, chart
        versions = set(re.findall(r'class="series" data-version="([^"]+)"', svg.group()))
        assert versions == {"base", "v1"}, (chart, versions)
        assert len(re.findall(r"<circle", svg.group())) >= 4
    assert "rolled_back" in dom and "worse: positive feedback 0.2 vs 0.6" in dom
    assert re.search(r"<td[^>]*>v1</td><td>60</td>", dom)
    # the version tree: base -> v1 (kto) -> v2 (grpo), v2 one level deeper, with the gate's figures
    table = re.search(r'<table id="generations">.*?</table>', dom, re.S)
    assert table, "no generations table"
    gens = re.findall(
        r'<tr class="generation" data-version="([^"]+)" data-parent="([^"]+)"><td>([^<]*)', table.group()
    )
    assert [(v, p) for v, p, _ in gens] == [("v1", "base"), ("v2", "v1")], gens
    assert gens[1][2].count("&nbsp;") > gens[0][2].count("&nbsp;")
    assert "0.450 → 0.600 [0.050, 0.250]" in table.group() and "1.05×" in table.group()

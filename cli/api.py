"""Monitoring JSON over HTTP (`rftloop api`): the data of `rftloop metrics`, for dashboards and scripts.

GET /api/metrics?since=15m&model=M   one row per (model, version)
GET /api/series?since=1h&step=60&model=M   per (model, version, step): traffic, errors, latency, cost, reward
GET /api/versions   each version's state, and the timeline of version events with reasons
GET /api/generations?model=M   the version tree: each published version, its parent, the gate's
    held-out accuracy against its parent's (gain interval), latency against its parent, state, live figures
GET /   the live dashboard (charts per version; reads the endpoints above every 5 s)
GET /healthz   ClickHouse reachable
Bad parameters get a 400 with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse

from infra.clickhouse import queries
from infra.clickhouse.client import connect
from infra.settings import ClickHouseSettings


def create_app(settings: ClickHouseSettings) -> FastAPI:
    app = FastAPI(title="rftloop monitoring", version="1")

    def client() -> Any:
        return connect(settings)

    def since_seconds(since: str) -> int:
        try:
            return queries.parse_duration(since)
        except queries.BadDuration as exc:
            raise HTTPException(status_code=400, detail=f"since: {exc}") from None

    @app.get("/api/metrics")
    def metrics(since: str = "15m", model: str = "") -> dict[str, Any]:
        rows = queries.version_metrics(client(), settings.database, since_seconds(since), model)
        return {"since": since, "model": model or None, "versions": rows}

    @app.get("/api/series")
    def series(since: str = "1h", step: int = Query(60, ge=1, le=86_400), model: str = "") -> dict[str, Any]:
        s = since_seconds(since)
        c = client()
        return {
            "since": since,
            "step": step,
            "traffic": queries.version_series(c, settings.database, s, step, model),
            "rewards": queries.reward_series(c, settings.database, s, step, model),
        }

    @app.get("/api/versions")
    def versions(limit: int = Query(200, ge=1, le=10_000)) -> dict[str, Any]:
        c = client()
        db = settings.database
        state = c.query(
            f"SELECT model, version, state, decision, traffic_share, reasons, updated_at "
            f"FROM {db}.version_state ORDER BY updated_at DESC"
        )
        timeline = c.query(
            f"SELECT occurred_at, model, version, kind, decision, reasons, actor, producer, "
            f"traffic_share FROM {db}.model_versions FINAL ORDER BY occurred_at DESC LIMIT {limit}"
        )

        def rows(result: Any) -> list[dict[str, Any]]:
            return [
                {
                    k: (v.isoformat() if hasattr(v, "isoformat") else v)
                    for k, v in zip(result.column_names, r, strict=True)
                }
                for r in result.result_rows
            ]

        return {"state": rows(state), "timeline": rows(timeline)}

    @app.get("/api/generations")
    def generations(model: str = "") -> dict[str, Any]:
        return {"model": model or None, "versions": queries.generations(client(), settings.database, model)}

    @app.get("/", response_class=HTMLResponse)
    def dashboard() -> str:
        return (Path(__file__).resolve().parent / "dashboard.html").read_text()

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        try:
            client().command("SELECT 1")
        except Exception as exc:  # report, do not crash: this is the health check
            raise HTTPException(status_code=503, detail=f"ClickHouse at {settings.url}: {exc}") from None
        return {"ok": True, "clickhouse": settings.url, "database": settings.database}

    return app

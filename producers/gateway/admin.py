"""The admin API (admin key only): decide a version by hand, and erase a person.

POST /admin/versions/{version}/promote|rollback   publish the decision on model.versions (202)
POST /admin/forget {"user": U, "reason"?, "policy"?: "retire"|"retrain", "dry_run"?: bool}
    the erasure of ``rftloop forget`` (infra/erasure.py), run from the gateway: 200 with the
    erasure event (rows deleted per table, tainted and retired versions, until when Kafka holds the
    person's events) and the report's lines. ClickHouse unreachable: 503, nothing half-done to
    fear (every step is idempotent; send it again).
"""

from __future__ import annotations

import asyncio
from typing import Any

from clickhouse_connect.driver.exceptions import OperationalError
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from infra.erasure import forget
from infra.settings import ClickHouseSettings, PrivacySettings
from producers.gateway.api import ApiError
from producers.gateway.gateway import Gateway
from schemas.events import TaintPolicy, VersionEventKind


class ForgetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, description="the user_id the events carry")
    reason: str | None = None
    policy: TaintPolicy | None = None  # default: RFTLOOP_PRIVACY_TAINTED_POLICY
    dry_run: bool = False


def add_admin_routes(app: FastAPI, gateway: Gateway, parse: Any) -> None:
    """``parse(request, Model)``: the app's body parser (400s naming the bad field)."""

    @app.post("/admin/versions/{version}/{action}")
    async def decide(version: str, action: str, request: Request) -> Any:
        gateway.keys.check(request, admin=True)
        kinds = {"promote": VersionEventKind.promoted, "rollback": VersionEventKind.rolled_back}
        if action not in kinds:
            raise ApiError(404, f"unknown action {action!r}: promote or rollback")
        await asyncio.to_thread(gateway.version_event, version, kinds[action], f"manual {action} (admin API)")
        return JSONResponse({"version": version, "action": action, "published": True}, status_code=202)

    @app.post("/admin/forget")
    async def erase(request: Request) -> Any:
        caller = gateway.keys.check(request, admin=True)
        body: ForgetRequest = await parse(request, ForgetRequest)
        privacy = PrivacySettings()
        try:
            report = await asyncio.to_thread(
                forget,
                body.user,
                kafka=gateway.kafka,
                registry=gateway.registry,
                clickhouse=ClickHouseSettings(),
                policy=body.policy or privacy.tainted_policy,
                actor=f"admin-api:{caller.key_id or 'no-key'}",
                reason=body.reason,
                topic_suffix=gateway.settings.topic_suffix,
                dry_run=body.dry_run,
            )
        except OperationalError as exc:
            raise ApiError(
                503,
                f"ClickHouse unreachable; the erasure may be partly done: send it again ({exc})",
                "server_error",
            ) from exc
        return JSONResponse(
            {
                "erasure": report.event.model_dump(mode="json"),
                "report": report.lines(),
                "dry_run": body.dry_run,
            }
        )

"""The gateway's HTTP surface: OpenAI chat/completions/models served by vLLM, feedback, health,
Prometheus metrics and the admin API, over ``gateway.Gateway``.

POST /v1/chat/completions, POST /v1/completions (``stream=true`` = SSE), GET /v1/models,
POST /v1/feedback, GET /healthz, GET /metrics (prometheus_client),
POST /admin/versions/{version}/promote|rollback, POST /admin/forget (admin key; ``admin.py``),
POST/DELETE /v1/shadows (trusted keys: evaluation on this engine; ``shadows.py``).

A request names the model as ``<served_name>`` (routed) or ``<served_name>:<version>``
(pinned). Every request emits InferenceRequested and InferenceCompleted (errors too)
through the SDK's background sender, so producing never blocks a response.
Bad input gets a 4xx with an OpenAI-style error body; a field the gateway does not honour gets a
400 that names it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from infra.settings import GatewaySettings, KafkaSettings, RegistrySettings
from producers.gateway.admin import add_admin_routes
from producers.gateway.api import (
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    ApiError,
    FeedbackRequest,
    error_body,
    invalid,
)
from producers.gateway.gateway import Gateway
from producers.gateway.metrics import CONTENT_TYPE
from producers.gateway.serving import Serving
from producers.gateway.shadows import EVALUATION_HEADER, Shadows, add_shadow_routes
from producers.gateway.versions import VersionFollower
from schemas.events import Endpoint

log = logging.getLogger(__name__)
FEEDBACK_IDS = uuid.UUID("0b6c3f5e-8a4d-4f7e-9d61-2f1c9a7e5b30")  # namespace of votes' event ids


class BodyLimit:
    """413 for a declared body over the limit, before it is read. Pure ASGI, not Starlette's
    ``BaseHTTPMiddleware``, which relays every streamed chunk through an extra task and queue."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
                body = error_body(
                    f"request body over {self.max_bytes} bytes", "invalid_request_error", "body_too_large"
                )
                await JSONResponse(body, status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _body(name: str) -> dict[str, Any]:
    """OpenAPI for a body the handler parses itself (so its errors keep the OpenAI shape)."""
    ref = {"$ref": f"#/components/schemas/{name}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


RFTLOOP_PROPERTIES: dict[str, Any] = {
    "session_id": {"type": "string", "maxLength": 256, "description": "sticky routing key (rftloop)"},
    "training_opt_out": {"type": "boolean", "description": "never train on this request (rftloop)"},
    "metadata": {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "recorded with the request; reference / expect_regex from trusted keys only",
    },
}


def _request_schema(model: Any, allowed: set[str], components: dict[str, Any]) -> dict[str, Any]:
    """vLLM's own request schema, cut to the fields this gateway honours, plus rftloop's."""
    js = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(js.pop("$defs", {}))
    js["properties"] = {k: v for k, v in js["properties"].items() if k in allowed} | RFTLOOP_PROPERTIES
    js["additionalProperties"] = False
    js["required"] = sorted({"model", *js.get("required", [])})
    return dict(js)


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["ChatRequest"] = _request_schema(ChatCompletionRequest, CHAT_FIELDS, components)
        components["CompletionRequest"] = _request_schema(CompletionRequest, COMPLETION_FIELDS, components)
        js = FeedbackRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(js.pop("$defs", {}))
        components["FeedbackRequest"] = js
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(gateway: Gateway) -> FastAPI:
    app = FastAPI(title="rftloop gateway", version="1")
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    s = gateway.settings
    shadows = Shadows(gateway.serving, gateway.router, s.adapter_root, s.lora_targets())
    if s.cors_origins.strip():
        # Closed by default (no CORS headers: browsers refuse cross-origin calls); opened per origin.
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=[o.strip() for o in s.cors_origins.split(",") if o.strip()],
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.message, exc.type, exc.code, exc.param),
            status_code=exc.status,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return JSONResponse(
            error_body(
                f"{loc}: {first.get('msg')}" if loc else str(first.get("msg")),
                "invalid_request_error",
                "invalid_request",
                loc or None,
            ),
            status_code=400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(
            error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500
        )

    app.add_middleware(BodyLimit, max_bytes=s.max_body_bytes)

    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > s.max_body_bytes:
            raise ApiError(413, f"request body over {s.max_body_bytes} bytes", code="body_too_large")
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"malformed JSON: {exc}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object", code="invalid_json")
        return data

    async def parse(request: Request, model: type[BaseModel]) -> Any:
        data = await body_of(request)
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise invalid(exc) from None

    @app.post("/v1/chat/completions", openapi_extra=_body("ChatRequest"))
    async def chat(request: Request) -> Any:
        caller = gateway.keys.check(request)
        data = await body_of(request)
        return await gateway.run(
            caller,
            data,
            Endpoint.chat,
            request.headers.get("traceparent"),
            request.headers.get(EVALUATION_HEADER),
        )

    @app.post("/v1/completions", openapi_extra=_body("CompletionRequest"))
    async def completions(request: Request) -> Any:
        caller = gateway.keys.check(request)
        data = await body_of(request)
        return await gateway.run(
            caller,
            data,
            Endpoint.completion,
            request.headers.get("traceparent"),
            request.headers.get(EVALUATION_HEADER),
        )

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        gateway.keys.check(request)
        weights = gateway.router.live()  # rolled-back, rejected and idle versions are not listed
        data = [
            {
                "id": s.served_name,
                "object": "model",
                "owned_by": "rftloop",
                "created": 0,
                "traffic": weights,
                "incumbent": gateway.router.incumbent,
            }
        ]
        data += [
            {
                "id": f"{s.served_name}:{v}",
                "object": "model",
                "owned_by": "rftloop",
                "created": 0,
                "parent": s.served_name,
                "traffic_share": w,
            }
            for v, w in sorted(weights.items())
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/feedback", openapi_extra=_body("FeedbackRequest"))
    async def feedback(request: Request) -> Any:
        caller = gateway.keys.check(request, limiter=gateway.keys.feedback)
        body: FeedbackRequest = await parse(request, FeedbackRequest)
        signed = gateway.request_ids.read(body.request_id)
        # An application key rates only the requests it made; evaluators and admins rate any.
        mine = signed is not None and signed.key_id == caller.key_id
        if not caller.trusted and not gateway.keys.open and not mine:
            gateway.metrics.feedback.labels("refused").inc()
            raise ApiError(
                403,
                "this key may rate only the requests it made (this request was made with another key, "
                "or not through this gateway); trusted keys may rate any request",
                "permission_error",
                "not_your_request",
                param="request_id",
            )
        version = signed.version if signed else "unknown"
        if signed is not None and body.choice >= signed.choices:
            gateway.metrics.feedback.labels("refused").inc()
            raise ApiError(
                400,
                f"choice={body.choice}, but this response has {signed.choices} choice(s) (0..{signed.choices - 1})",
                code="no_such_choice",
                param="choice",
            )
        # One rater, one vote per request: the vote's event id is derived from (request, rater, kind),
        # so a repeated vote is the same event and the streams count it once (first vote wins).
        rater = f"{caller.key_id}/{body.user or ''}" if caller.trusted else caller.key_id
        vote = f"{body.request_id}|{rater}|{body.kind.value}|{body.other_request_id or ''}"
        if body.choice:  # a vote on each choice counts (choice 0 keeps the n = 1 ids)
            vote += f"|choice{body.choice}"
        event_id = uuid.uuid5(FEEDBACK_IDS, vote)
        try:
            gateway.feedback.send(
                body.request_id,
                body.kind.value,
                body.value,
                model=s.served_name,
                version=version,
                scale_max=body.scale_max,
                correction=body.correction,
                other_request_id=body.other_request_id,
                comment=body.comment,
                user_id=body.user,
                event_id=event_id,
                choice=body.choice,
            )
        except ValueError as exc:
            raise ApiError(400, str(exc), code="invalid_feedback") from None
        gateway.metrics.feedback.labels("accepted").inc()
        return JSONResponse(
            {"accepted": True, "request_id": body.request_id, "version": version, "event_id": str(event_id)},
            status_code=202,
        )

    @app.get("/healthz")
    async def healthz() -> Any:
        events = gateway.events.health()
        fb = gateway.feedback.health()
        follower = gateway.follower
        versions_kafka = follower.kafka_retry.health() if follower else {"kafka": "ok"}
        degraded = events["status"] != "ok" or fb["status"] != "ok" or versions_kafka["kafka"] != "ok"
        body = {
            "status": "degraded" if degraded else "ok",
            "instance": gateway.instance,
            "model": s.served_name,
            "engine_start_s": round(gateway.serving.started_s, 1),
            # infra/lora_cpu.py on the CPU engine; vLLM's own kernels otherwise
            "lora_kernels": gateway.serving.lora_kernels,
            "traffic": gateway.router.weights(),
            "incumbent": gateway.router.incumbent,
            "versions_caught_up": bool(follower and follower.caught_up.is_set()),
            "refused_versions": follower.refused if follower else {},
            "decision_lag_ms": follower.decision_lag_ms if follower else {},
            "shadows": list(shadows.loaded),
            "versions_follower": versions_kafka,
            "events": events,
            "feedback_events": fb,
        }
        return JSONResponse(body, status_code=200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)

    add_admin_routes(app, gateway, parse)
    add_shadow_routes(app, shadows, gateway.keys, parse)
    return app


def serve(
    settings: GatewaySettings, kafka: KafkaSettings, registry: RegistrySettings, cache_dir: Any
) -> None:
    """Prepare the model, start vLLM, follow model.versions, serve HTTP (blocks)."""
    import uvicorn

    from infra import models

    path = models.resolve(settings.model, cache_dir)
    settings.adapter_root.mkdir(parents=True, exist_ok=True)
    serving = Serving(path, settings)
    gateway = Gateway(settings, kafka, registry, serving)
    app = create_app(gateway)

    @app.on_event("startup")
    async def _start() -> None:
        print(f"gateway: starting vLLM on {path} ...", flush=True)
        await serving.start()  # inside the server's event loop: vLLM's output handler binds to it
        kernels = "grouped CPU matmuls (infra/lora_cpu.py)" if serving.lora_kernels == "grouped" else "vLLM's"
        print(f"gateway: engine ready in {serving.started_s:.0f} s; LoRA kernels: {kernels}", flush=True)
        gateway.follower = VersionFollower(
            kafka,
            registry,
            settings,
            gateway.router,
            serving.load_adapter,
            asyncio.get_running_loop(),
            instance=gateway.instance,
        )
        gateway.follower.start()

    @app.on_event("shutdown")
    async def _stop() -> None:
        if gateway.follower:
            gateway.follower.stop()
        gateway.events.close(10)
        gateway.feedback.close(10)
        gateway.telemetry.close()
        await serving.shutdown()

    print(f"gateway: serving {settings.served_name} on http://{settings.host}:{settings.port}/v1", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")

"""OpenAI-compatible HTTP API on vLLM, with version routing, hot-loaded adapters and events.

POST /v1/chat/completions, POST /v1/completions (``stream=true`` = SSE), GET /v1/models,
POST /v1/feedback, GET /healthz, GET /metrics (Prometheus text),
POST /admin/versions/{version}/promote|rollback (admin key).

A request names the model as ``<served_name>`` (routed) or ``<served_name>:<version>``
(pinned). Every request emits InferenceRequested and InferenceCompleted (errors too)
through the SDK's background sender, so producing never blocks a response.
Bad input gets a 4xx with an OpenAI-style error body.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from infra.publish import publish_event
from infra.settings import GatewaySettings, KafkaSettings, RegistrySettings
from producers.gateway.engine import Engine
from producers.gateway.ratelimit import RateLimiter
from producers.gateway.request_ids import RequestIds
from producers.gateway.router import Router, UnknownVersion
from producers.gateway.versions import VersionFollower
from producers.sdk.logger import FeedbackClient, InferenceLogger
from producers.sdk.redaction import Redactor
from schemas.events import (
    ChatMessage,
    CompletionStatus,
    Endpoint,
    FeedbackKind,
    InferenceCompleted,
    InferenceRequested,
    ModelVersionEvent,
    VersionEventKind,
)
from schemas.topics import COMPLETED, REQUESTED, VERSIONS

log = logging.getLogger(__name__)
PRODUCER = "rftloop-gateway"


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str = Field(pattern="^(system|user|assistant|tool|developer)$")
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, v: Any) -> Any:
        if isinstance(v, list):  # OpenAI content parts: keep the text parts
            return "".join(p.get("text", "") for p in v if isinstance(p, dict))
        return v


class Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="int64, as in the OpenAI API")
    stream: bool = False
    user: str | None = Field(None, max_length=256)
    session_id: str | None = Field(None, max_length=256)
    training_opt_out: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)


class ChatRequest(Common):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Common):
    prompt: str = Field(min_length=1)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=256)
    kind: FeedbackKind
    value: float | None = None
    scale_max: float | None = None
    correction: str | None = None
    other_request_id: str | None = None
    comment: str | None = Field(None, max_length=4000)
    user: str | None = None


class Gateway:
    def __init__(
        self, settings: GatewaySettings, kafka: KafkaSettings, registry: RegistrySettings, engine: Engine
    ) -> None:
        self.settings, self.engine = settings, engine
        # Which replica served a request: the events' producer names it (per-replica figures).
        self.instance = settings.instance or f"{socket.gethostname()}:{settings.port}"
        self.producer = f"{PRODUCER}@{self.instance}"
        self.router = Router(settings.canary_share)
        redactor = Redactor(
            settings.redact,
            [p for p in settings.redact_patterns.split(";;") if p],
            disabled=[d.strip() for d in settings.redact_disabled.split(",") if d.strip()],
            phone_regions=[r.strip() for r in settings.redact_phone_regions.split(",") if r.strip()],
        )
        self.events = InferenceLogger(
            producer=self.producer,
            kafka=kafka,
            registry=registry,
            buffer=settings.event_buffer,
            redactor=redactor,
            topic_suffix=settings.topic_suffix,
        )
        self.feedback = FeedbackClient(
            producer=self.producer,
            kafka=kafka,
            registry=registry,
            buffer=settings.event_buffer,
            redactor=redactor,
            topic_suffix=settings.topic_suffix,
        )
        self.kafka, self.registry = kafka, registry
        self.redact = redactor
        self._key_hashes = [hashlib.sha256(k.encode()).digest() for k in settings.api_key_list()]
        self._admin_hash = hashlib.sha256(settings.admin_key.get_secret_value().encode()).digest()
        id_key = settings.request_id_key.get_secret_value() or settings.api_keys.get_secret_value()
        self.request_ids = RequestIds(id_key.encode())  # the version travels in the id, for feedback
        self.counts: Counter[tuple[str, str]] = Counter()
        self.tokens: Counter[str] = Counter()
        self.follower: VersionFollower | None = None
        self.limiter = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst)

    # -- auth --------------------------------------------------------------------
    @staticmethod
    def _matches(presented: str, hashes: list[bytes]) -> bool:
        digest = hashlib.sha256(presented.encode()).digest()
        return any(hmac.compare_digest(digest, h) for h in hashes)  # constant time per key

    def check_key(self, request: Request, admin: bool = False) -> None:
        hashes = [self._admin_hash] if admin else self._key_hashes
        if not hashes:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token or not self._matches(token.strip(), hashes):
            raise ApiError(
                401,
                "missing or wrong API key" + (" (admin key required)" if admin else ""),
                "authentication_error",
                "invalid_api_key",
            )
        wait = self.limiter.take(hashlib.sha256(token.strip().encode()).hexdigest())
        if wait > 0:
            raise ApiError(
                429,
                f"rate limit of {self.limiter.rate:g} requests/s (burst {self.limiter.burst}) for this key "
                f"exceeded; retry in {wait:.2f} s",
                "rate_limit_error",
                "rate_limit_exceeded",
                headers={"Retry-After": str(max(1, round(wait + 0.5)))},
            )

    # -- routing ---------------------------------------------------------------
    def pick(self, model: str, sticky: str | None) -> tuple[str, Any]:
        base, _, pinned = model.partition(":")
        if base != self.settings.served_name:
            raise ApiError(
                404,
                f"model {model!r} does not exist; this gateway serves {self.settings.served_name!r} "
                f"(or {self.settings.served_name}:<version>)",
                code="model_not_found",
                param="model",
            )
        try:
            route = self.router.choose(sticky, pinned or None)
        except UnknownVersion:
            live = ", ".join(sorted(self.router.routes))
            raise ApiError(
                404,
                f"version {pinned!r} is not live; live versions: {live}",
                code="model_not_found",
                param="model",
            ) from None
        return route.version, route

    def cost(self, prompt_tokens: int, completion_tokens: int, seconds: float) -> Decimal:
        s = self.settings
        value = (
            prompt_tokens * s.price_prompt_per_1k + completion_tokens * s.price_completion_per_1k
        ) / 1000 + (seconds * s.price_engine_second)
        return Decimal(str(round(value, 9)))

    # -- generation -------------------------------------------------------------
    async def run(self, body: Common, prompt: str, messages: list[Message], endpoint: Endpoint) -> Any:
        s = self.settings
        max_tokens = body.max_completion_tokens or body.max_tokens or min(256, s.max_tokens_limit)
        if max_tokens > s.max_tokens_limit:
            raise ApiError(
                400,
                f"max_tokens={max_tokens} is above this gateway's limit of {s.max_tokens_limit}",
                param="max_tokens",
                code="max_tokens_too_large",
            )
        version, route = self.pick(body.model, body.user or body.session_id)
        prompt_tokens = self.engine.count(prompt)
        if prompt_tokens + max_tokens > s.max_model_len:
            raise ApiError(
                400,
                f"this model's context is {s.max_model_len} tokens; the prompt has {prompt_tokens} "
                f"and max_tokens asks for {max_tokens}",
                param="messages",
                code="context_length_exceeded",
            )
        rid = self.request_ids.new("chatcmpl", version)
        served = f"{s.served_name}:{version}" if version != "base" else s.served_name
        adapter = route.adapter_path
        common: dict[str, Any] = dict(
            producer=self.producer,
            request_id=rid,
            model=s.served_name,
            version=version,
            adapter=adapter,
            user_id=body.user,
            session_id=body.session_id,
            training_opt_out=body.training_opt_out,
        )
        requested = InferenceRequested(
            **common,
            endpoint=endpoint,
            prompt=self.redact(prompt),
            messages=[ChatMessage(role=m.role, content=self.redact(m.content)) for m in messages],
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            params={k: str(v) for k, v in body.metadata.items()},
        )
        lora = (version, route.lora_id, adapter) if adapter else None
        t0 = time.perf_counter()
        chunks = self.engine.generate(
            prompt,
            request_id=rid,
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            lora=lora,
        )
        state: dict[str, Any] = {
            "text": [],
            "tokens": 0,
            "finish": None,
            "ttft": None,
            "error": None,
            "engine_s": None,
        }

        def completed() -> InferenceCompleted:
            seconds = time.perf_counter() - t0
            engine_s = min(seconds, state["engine_s"]) if state["engine_s"] is not None else seconds
            n = int(state["tokens"])
            ok = state["error"] is None
            self.counts[(version, "ok" if ok else "error")] += 1
            self.tokens["prompt"] += prompt_tokens
            self.tokens["completion"] += n
            return InferenceCompleted(
                **common,
                status=CompletionStatus.ok if ok else CompletionStatus.error,
                error_kind=None if ok else "engine",
                error_message=state["error"],
                completion=self.redact("".join(state["text"])),
                finish_reason=state["finish"],
                latency_ms=seconds * 1000,
                ttft_ms=state["ttft"],
                prompt_tokens=prompt_tokens,
                completion_tokens=n,
                tokens_per_s=n / seconds if n and seconds > 0 else None,
                # engine time, not wall time: queueing and a slow SSE reader are not the version's cost
                cost=self.cost(prompt_tokens, n, engine_s),
                engine_seconds=engine_s,
            )

        async def consume() -> AsyncIterator[str]:
            try:
                async for c in chunks:
                    if state["ttft"] is None and c.tokens:
                        state["ttft"] = (time.perf_counter() - t0) * 1000
                    state["text"].append(c.text)
                    state["tokens"] += c.tokens
                    if c.finish_reason:
                        state["finish"] = c.finish_reason
                    if c.engine_s is not None:
                        state["engine_s"] = c.engine_s
                    yield c.text
            except Exception as exc:
                state["error"] = f"{type(exc).__name__}: {exc}"
                log.exception("generation failed for %s", rid)
            finally:
                self.events.submit_events((REQUESTED, requested), (COMPLETED, completed()))

        headers = {"x-rftloop-version": version, "x-request-id": rid}
        created = int(time.time())
        if body.stream:
            return StreamingResponse(
                self._sse(consume(), rid, served, created, endpoint, state),
                media_type="text/event-stream",
                headers=headers,
            )
        async for _ in consume():
            pass
        if state["error"] is not None:
            raise ApiError(503, f"the engine failed: {state['error']}", "server_error", "engine_error")
        text = "".join(state["text"])
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": state["tokens"],
            "total_tokens": prompt_tokens + state["tokens"],
        }
        if endpoint == Endpoint.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": state["finish"],
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": state["finish"], "logprobs": None}
            obj = "text_completion"
        return JSONResponse(
            {
                "id": rid,
                "object": obj,
                "created": created,
                "model": served,
                "choices": [choice],
                "usage": usage,
            },
            headers=headers,
        )

    async def _sse(
        self,
        pieces: AsyncIterator[str],
        rid: str,
        served: str,
        created: int,
        endpoint: Endpoint,
        state: dict[str, Any],
    ) -> AsyncIterator[bytes]:
        chat = endpoint == Endpoint.chat
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: dict[str, Any] | str, finish: str | None) -> bytes:
            choice = (
                {"index": 0, "delta": delta, "finish_reason": finish}
                if chat
                else {"index": 0, "text": delta, "finish_reason": finish, "logprobs": None}
            )
            payload = {"id": rid, "object": obj, "created": created, "model": served, "choices": [choice]}
            return f"data: {json.dumps(payload)}\n\n".encode()

        if chat:
            yield chunk({"role": "assistant", "content": ""}, None)
        async for text in pieces:
            if text:
                yield chunk({"content": text} if chat else text, None)
        if state["error"] is not None:
            err = error_body(f"the engine failed: {state['error']}", "server_error", "engine_error")
            yield f"data: {json.dumps(err)}\n\n".encode()
        else:
            yield chunk({} if chat else "", state["finish"] or "stop")
        yield b"data: [DONE]\n\n"

    # -- admin -----------------------------------------------------------------
    def version_event(self, version: str, kind: VersionEventKind, reason: str) -> None:
        if version not in self.router.routes:
            raise ApiError(404, f"version {version!r} is not live here", code="version_not_found")
        event = ModelVersionEvent(
            producer=self.producer,
            kind=kind,
            model=self.settings.served_name,
            version=version,
            decision="promote" if kind == VersionEventKind.promoted else "rollback",
            reasons=[reason],
            actor="admin-api",
            traffic_share=1.0 if kind == VersionEventKind.promoted else 0.0,
        )
        publish_event(self.kafka, self.registry, VERSIONS, event, self.settings.topic_suffix)


def _body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body the handler parses itself (so its errors keep the OpenAI shape)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _openapi(app: FastAPI, models: list[type[BaseModel]]) -> dict[str, Any]:
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(js.pop("$defs", {}))
            components[model.__name__] = js
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(gateway: Gateway) -> FastAPI:
    app = FastAPI(title="rftloop gateway", version="1")
    app.openapi = lambda: _openapi(app, [ChatRequest, CompletionRequest, FeedbackRequest])  # type: ignore[method-assign]
    s = gateway.settings
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

    @app.middleware("http")
    async def _limit(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > s.max_body_bytes):
            return JSONResponse(
                error_body(
                    f"request body over {s.max_body_bytes} bytes", "invalid_request_error", "body_too_large"
                ),
                status_code=413,
            )
        return await call_next(request)

    async def parse(request: Request, model: type[BaseModel]) -> Any:
        raw = await request.body()
        if len(raw) > s.max_body_bytes:
            raise ApiError(413, f"request body over {s.max_body_bytes} bytes", code="body_too_large")
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"malformed JSON: {exc}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object", code="invalid_json")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            raise ApiError(400, f"{loc}: {first['msg']}", param=loc or None, code="invalid_request") from None

    @app.post("/v1/chat/completions", openapi_extra=_body(ChatRequest))
    async def chat(request: Request) -> Any:
        gateway.check_key(request)
        body: ChatRequest = await parse(request, ChatRequest)
        if not any(m.content.strip() for m in body.messages):
            raise ApiError(400, "messages: every message is empty", param="messages", code="empty_messages")
        msgs = [{"role": m.role, "content": m.content} for m in body.messages]
        return await gateway.run(body, gateway.engine.chat_prompt(msgs), body.messages, Endpoint.chat)

    @app.post("/v1/completions", openapi_extra=_body(CompletionRequest))
    async def completions(request: Request) -> Any:
        gateway.check_key(request)
        body: CompletionRequest = await parse(request, CompletionRequest)
        return await gateway.run(body, body.prompt, [], Endpoint.completion)

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        gateway.check_key(request)
        weights = gateway.router.weights()
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

    @app.post("/v1/feedback", openapi_extra=_body(FeedbackRequest))
    async def feedback(request: Request) -> Any:
        gateway.check_key(request)
        body: FeedbackRequest = await parse(request, FeedbackRequest)
        version = gateway.request_ids.version_of(body.request_id) or "unknown"
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
            )
        except ValueError as exc:
            raise ApiError(400, str(exc), code="invalid_feedback") from None
        return JSONResponse(
            {"accepted": True, "request_id": body.request_id, "version": version}, status_code=202
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
            "engine_start_s": round(gateway.engine.started_s, 1),
            "traffic": gateway.router.weights(),
            "incumbent": gateway.router.incumbent,
            "versions_caught_up": bool(follower and follower.caught_up.is_set()),
            "refused_versions": follower.refused if follower else {},
            "versions_follower": versions_kafka,
            "events": events,
            "feedback_events": fb,
        }
        return JSONResponse(body, status_code=200)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        lines = ["# TYPE rftloop_gateway_requests_total counter"]
        for (version, status), n in sorted(gateway.counts.items()):
            lines.append(f'rftloop_gateway_requests_total{{version="{version}",status="{status}"}} {n}')
        lines.append("# TYPE rftloop_gateway_tokens_total counter")
        for kind, n in sorted(gateway.tokens.items()):
            lines.append(f'rftloop_gateway_tokens_total{{kind="{kind}"}} {n}')
        h = gateway.events.health()
        lines += [
            "# TYPE rftloop_gateway_events_waiting gauge",
            f"rftloop_gateway_events_waiting {h['waiting']}",
            "# TYPE rftloop_gateway_events_dropped_total counter",
            f"rftloop_gateway_events_dropped_total {h['dropped']}",
            "# TYPE rftloop_gateway_events_failed_total counter",
            f"rftloop_gateway_events_failed_total {h['failed']}",
            "# TYPE rftloop_gateway_traffic_share gauge",
        ]
        for version, w in sorted(gateway.router.weights().items()):
            lines.append(f'rftloop_gateway_traffic_share{{version="{version}"}} {w}')
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @app.post("/admin/versions/{version}/{action}")
    async def admin(version: str, action: str, request: Request) -> Any:
        gateway.check_key(request, admin=True)
        kinds = {"promote": VersionEventKind.promoted, "rollback": VersionEventKind.rolled_back}
        if action not in kinds:
            raise ApiError(404, f"unknown action {action!r}: promote or rollback")
        await asyncio.to_thread(gateway.version_event, version, kinds[action], f"manual {action} (admin API)")
        return JSONResponse({"version": version, "action": action, "published": True}, status_code=202)

    return app


def serve(
    settings: GatewaySettings, kafka: KafkaSettings, registry: RegistrySettings, cache_dir: Any
) -> None:
    """Prepare the model, start vLLM, follow model.versions, serve HTTP (blocks)."""
    import uvicorn

    from infra import models

    path = models.resolve(settings.model, cache_dir)
    settings.adapter_root.mkdir(parents=True, exist_ok=True)
    engine = Engine(path, settings)
    gateway = Gateway(settings, kafka, registry, engine)
    app = create_app(gateway)

    @app.on_event("startup")
    async def _start() -> None:
        print(f"gateway: starting vLLM on {path} ...", flush=True)
        engine.start()  # inside the server's event loop: vLLM's output handler binds to it
        print(f"gateway: engine ready in {engine.started_s:.0f} s", flush=True)
        gateway.follower = VersionFollower(
            kafka,
            registry,
            settings,
            gateway.router,
            engine.load_adapter,
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
        engine.shutdown()

    print(f"gateway: serving {settings.served_name} on http://{settings.host}:{settings.port}/v1", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")

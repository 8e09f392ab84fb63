"""The gateway's API contract: OpenAI-style errors, which request fields it honours, feedback bodies.

Chat and completion bodies are validated by vLLM's own request models (``serving.py``); this module
decides which fields reach them. vLLM's models accept and drop unknown fields, so a field outside
``CHAT_FIELDS`` / ``COMPLETION_FIELDS`` is refused here with a 400 that names it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.events import FeedbackKind

# OpenAI request fields that vLLM implements as OpenAI defines them, plus vLLM's common sampling
# extensions (top_k, min_p, repetition_penalty, min_tokens) and its ``return_token_ids`` (the
# prompt's and each choice's token ids: what RL rollouts need, the trainer's among them).
SAMPLING = {
    "model", "max_tokens", "temperature", "top_p", "n", "seed", "stop", "stream", "stream_options",
    "presence_penalty", "frequency_penalty", "logit_bias", "user", "top_k", "min_p",
    "repetition_penalty", "min_tokens", "return_token_ids",
}  # fmt: skip
CHAT_FIELDS = SAMPLING | {
    "messages", "max_completion_tokens", "logprobs", "top_logprobs", "response_format", "tools",
    "tool_choice", "parallel_tool_calls",
}  # fmt: skip
COMPLETION_FIELDS = SAMPLING | {"prompt", "logprobs", "echo"}
# rftloop's own fields: read by the gateway, never sent to vLLM.
RFTLOOP_FIELDS = {"session_id", "training_opt_out", "metadata"}
# metadata keys that are ground truth for evaluators and training: only trusted keys may send them.
GROUND_TRUTH = ("reference", "expect_regex")
# What the request asked, recorded into the events' params under this prefix (a client cannot set it).
RECORDED = ("response_format", "tools", "tool_choice", "n", "stop", "logprobs", "top_logprobs", "seed")
REQUEST_PREFIX = "request."


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


def invalid(exc: ValidationError) -> ApiError:
    """A 400 naming the first field a pydantic model (ours or vLLM's) refused."""
    first = exc.errors()[0]
    loc = ".".join(str(x) for x in first["loc"])
    return ApiError(
        400, f"{loc}: {first['msg']}" if loc else first["msg"], param=loc or None, code="invalid_request"
    )


def check_fields(data: dict[str, Any], allowed: set[str]) -> None:
    """400 naming every field this gateway would otherwise drop."""
    unknown = sorted(set(data) - allowed - RFTLOOP_FIELDS)
    if unknown:
        raise ApiError(
            400,
            f"unsupported field(s) {', '.join(unknown)}: this gateway does not implement them and "
            "refuses rather than ignore them",
            param=unknown[0],
            code="unsupported_parameter",
        )


def rftloop_fields(data: dict[str, Any]) -> tuple[str | None, bool, dict[str, str]]:
    """(session_id, training_opt_out, metadata) with their types checked; removed from ``data``."""
    session = data.pop("session_id", None)
    opt_out = data.pop("training_opt_out", False)
    metadata = data.pop("metadata", None) or {}
    if session is not None and (not isinstance(session, str) or len(session) > 256):
        raise ApiError(400, "session_id: a string of at most 256 characters", param="session_id")
    if not isinstance(opt_out, bool):
        raise ApiError(400, "training_opt_out: true or false", param="training_opt_out")
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ApiError(400, "metadata: an object of string values", param="metadata")
    reserved = sorted(k for k in metadata if k.startswith(REQUEST_PREFIX))
    if reserved:
        raise ApiError(
            400, f"metadata.{reserved[0]}: keys under {REQUEST_PREFIX!r} are the gateway's", param="metadata"
        )
    return session, opt_out, metadata


def text_of(content: Any) -> str:
    """A message's text: a string, or OpenAI content parts (their text parts, joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


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
    choice: int = Field(0, ge=0, description="Which choice of an n > 1 response this rates (0 for n = 1).")

"""The gateway's two events per request, built off the request path.

The request path keeps only references (``Request``: the request's fields, ``Outcome``: what the
user saw of each choice, filled as the response is produced). When the response ends, ``build`` is
queued to the SDK's background sender, which redacts the prompt, messages and completion, renders
the chat template (the prompt the model saw, as text), and builds InferenceRequested +
InferenceCompleted there: redaction (~0.03-0.2 ms) and template rendering never delay a response.

A request with n > 1 records every choice in ``InferenceCompleted.choices`` (choice 0 is also the
event's ``completion``), so feedback and evaluators can rate the choice the user saw. The engine
reports only the sum of the choices' tokens in ``usage``; each choice's own count comes from the token
ids the gateway asks vLLM for and takes out of the response before the client sees it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from producers.gateway.api import text_of
from schemas.events import (
    ChatMessage,
    CompletionChoice,
    CompletionStatus,
    Endpoint,
    Event,
    InferenceCompleted,
    InferenceRequested,
    utcnow,
)
from schemas.topics import COMPLETED, REQUESTED, TopicSpec


@dataclass
class Choice:
    """One choice of a response, as the user saw it."""

    text: list[str] = field(default_factory=list)
    tools: dict[int, dict[str, str]] = field(default_factory=dict)
    finish: str | None = None
    tokens: int = 0  # from the response's token ids (n > 1); 0 when not counted

    def completion(self) -> str:
        text = "".join(self.text)
        if not text and self.tools:  # a tool call: its name and arguments are the answer
            calls = [{"name": t["name"], "arguments": t["arguments"]} for _, t in sorted(self.tools.items())]
            return json.dumps(calls)
        return text


@dataclass
class Outcome:
    """What the user saw of one request (every choice), filled as the response is produced."""

    choices: dict[int, Choice] = field(default_factory=dict)
    ttft_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine_s: float | None = None
    error: str | None = None

    def choice(self, index: int) -> Choice:
        return self.choices.setdefault(index, Choice())

    @property
    def finish(self) -> str | None:
        return self.choice(0).finish

    def completion(self) -> str:
        return self.choice(0).completion()

    def take_metrics(self, metrics: dict[str, Any] | None) -> None:
        """vLLM's per-request timings: engine time = scheduled -> last token (no queueing)."""
        m = metrics or {}
        ttft, gen = m.get("time_to_first_token_ms"), m.get("generation_time_ms")
        if ttft is not None:
            self.engine_s = (ttft + (gen or 0.0)) / 1000
            if self.ttft_s is None:
                self.ttft_s = ((m.get("queue_time_ms") or 0.0) + ttft) / 1000

    def take_token_ids(self, obj: dict[str, Any], blank: bool, keep: bool = False) -> None:
        """Count each choice's token ids and, unless the client asked for them (``keep``), take
        them out of the response: set to None where its shape has the field (``blank``), else removed."""
        for holder in [obj, *(obj.get("choices") or [])]:
            for key in ("token_ids", "prompt_token_ids"):
                if key not in holder:
                    continue
                ids = holder[key] if keep else holder.pop(key)
                if blank and not keep:
                    holder[key] = None
                if key == "token_ids" and ids and holder is not obj:
                    self.choice(int(holder.get("index") or 0)).tokens += len(ids)

    def take_choice(self, choice: dict[str, Any], chat: bool) -> bool:
        """Add one choice (or a streamed delta of one); True if it carried content or a tool call."""
        got = self.choice(int(choice.get("index") or 0))
        piece: dict[str, Any] = (
            (choice.get("delta") or choice.get("message") or {}) if chat else {"content": choice.get("text")}
        )
        if piece.get("content"):
            got.text.append(str(piece["content"]))
        calls = piece.get("tool_calls") or []
        for call in calls:
            slot = got.tools.setdefault(int(call.get("index", len(got.tools))), {"name": "", "arguments": ""})
            fn = call.get("function") or {}
            slot["name"] += fn.get("name") or ""
            slot["arguments"] += fn.get("arguments") or ""
        if choice.get("finish_reason"):
            got.finish = choice["finish_reason"]
        return bool(piece.get("content") or calls)


@dataclass(frozen=True)
class Request:
    """What InferenceRequested records, unredacted, as the request path has it."""

    common: dict[str, Any]  # the envelope and routing fields both events share
    endpoint: Endpoint
    messages: list[dict[str, Any]]  # chat
    prompt: str  # completions
    max_tokens: int
    temperature: float
    top_p: float
    params: dict[str, str]
    # when the request was routed: InferenceRequested's occurred_at (the events are built after the
    # response ends, and a request routed before a rollback must not read as routed after it)
    routed_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class Served:
    """How the request was served, measured when the response ended."""

    seconds: float
    engine_s: float
    cost: Decimal


def build(
    redact: Callable[[str], str],
    chat_prompt: Callable[[list[dict[str, str]]], str],
    req: Request,
    out: Outcome,
    served: Served,
) -> list[tuple[TopicSpec, Event | dict[str, Any]]]:
    """The two events, redacted (runs on the sender thread)."""
    if req.endpoint == Endpoint.chat:
        messages = [
            ChatMessage(role=str(m.get("role", "")), content=redact(text_of(m.get("content"))))
            for m in req.messages
        ]
        try:
            prompt = chat_prompt([{"role": m.role, "content": m.content} for m in messages])
        except Exception:  # a template that cannot render these roles: the events keep the messages
            prompt = "\n".join(m.content for m in messages)
    else:
        messages, prompt = [], redact(req.prompt)
    requested = InferenceRequested(
        **req.common,
        occurred_at=req.routed_at,
        endpoint=req.endpoint,
        prompt=prompt,
        messages=messages,
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        params=req.params,
    )
    ok, n = out.error is None, out.completion_tokens
    choices = []
    if len(out.choices) > 1:
        for index, choice in sorted(out.choices.items()):
            choices.append(
                CompletionChoice(
                    index=index,
                    completion=redact(choice.completion()),
                    finish_reason=choice.finish,
                    completion_tokens=choice.tokens,
                )
            )
    done = InferenceCompleted(
        **req.common,
        status=CompletionStatus.ok if ok else CompletionStatus.error,
        error_kind=None if ok else "engine",
        error_message=out.error,
        completion=redact(out.completion()),
        finish_reason=out.finish,
        latency_ms=served.seconds * 1000,
        ttft_ms=out.ttft_s * 1000 if out.ttft_s is not None else None,
        prompt_tokens=out.prompt_tokens,
        completion_tokens=n,
        tokens_per_s=n / served.seconds if n and served.seconds > 0 else None,
        # engine time, not wall time: queueing and a slow SSE reader are not the version's cost
        cost=served.cost,
        engine_seconds=served.engine_s,
        choices=choices,
    )
    return [(REQUESTED, requested), (COMPLETED, done)]

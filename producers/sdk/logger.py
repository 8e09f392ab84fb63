"""Log any LLM call, and its feedback, as rftloop events — three lines in an application:

    from producers.sdk import InferenceLogger
    with InferenceLogger(producer="sdk:support-bot") as log:
        rid = log.log(model="gpt-4o", prompt=question, completion=answer, latency_ms=820)

``log`` returns the request_id to send feedback for later with ``FeedbackClient``.
The calling thread only queues a tuple, so the call costs microseconds. The event is built,
redacted, encoded and sent by a child process (``sender_process.py``, the default), or with
``process=False`` by a background thread of the application (``sender.py``).

Why a process by default: the thread's Python work (~70-80 µs of CPU a call, measured) holds the
application's GIL. Where it keeps up in the calls' pauses, a call costs its own few µs; where it
does not (2 cores shared with the broker: 9-15k calls/s against the benchmark bursts' 20k/s),
the calls wait for it and the p99 was 0.24-1.2 ms, against 28-34 µs with the process
(``producers.sdk_log_call_us``). The thread stays for callers whose builds cannot travel to a
process (the gateway's) or that do not want one.

A logger made before ``fork()`` (gunicorn ``--preload``, Celery's prefork pool) works in the
children too: each makes its own sender on its first call (``forking``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from infra.settings import KafkaSettings, RegistrySettings
from producers.sdk import forking
from producers.sdk.redaction import Redactor
from producers.sdk.sender import Build, EventSender
from producers.sdk.sender_process import IN_CHILD, BuildContext, ProcessSender
from schemas.events import (
    CompletionStatus,
    Endpoint,
    Event,
    FeedbackKind,
    FeedbackSource,
    FeedbackSubmitted,
    InferenceCompleted,
    InferenceRequested,
)
from schemas.topics import COMPLETED, FEEDBACK, REQUESTED, TopicSpec


class LoggerMisuse(ValueError):
    """A call that cannot become a valid event (missing prompt, negative latency, unknown kind ...)."""


def _ms_time(ts: float) -> datetime:
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


class _Client:
    topics: tuple[TopicSpec, ...]

    def __init__(
        self,
        *,
        producer: str,
        kafka: KafkaSettings | None = None,
        registry: RegistrySettings | None = None,
        buffer: int = 100_000,
        redactor: Redactor | None = None,
        topic_suffix: str = "",
        process: bool = True,
    ) -> None:
        """``process=True`` (the default) builds, redacts, encodes and delivers the events in a
        child process (``sender_process.py``): no GIL shared with the application, at the price of
        a Python process and ~1 s to start it. ``process=False``: a thread of this process
        (``sender.py``), which ``submit_built`` needs for builds that do not pickle."""
        self.producer_name = producer
        self.redact = redactor if redactor is not None else Redactor()
        kafka, registry = kafka or KafkaSettings(), registry or RegistrySettings()
        self._me: Any = IN_CHILD if process else self  # the build functions' ``self`` (rebuilt in a child)

        def new_sender() -> EventSender | ProcessSender:
            if process:
                context = BuildContext(producer, self.redact)
                return ProcessSender(
                    kafka,
                    registry,
                    list(self.topics),
                    context=context,
                    buffer=buffer,
                    topic_suffix=topic_suffix,
                )
            return EventSender(kafka, registry, list(self.topics), buffer=buffer, topic_suffix=topic_suffix)

        self._new_sender = new_sender
        self._sender: EventSender | ProcessSender | forking.Unstarted = new_sender()
        forking.track(self)  # made before a fork, it makes its own sender in the child (``forking``)

    def _forked(self) -> None:
        """In a child just forked: give up the parent's sender; the first call makes this process's."""
        if self._sender._closed:
            return  # closed before the fork: closed here too
        self._sender._forked_away()

        def swap(sender: EventSender | ProcessSender) -> None:
            self._sender = sender

        self._sender = forking.Unstarted(self._new_sender, swap)

    @property
    def stats(self) -> Any:
        return self._sender.stats

    def health(self) -> dict[str, Any]:
        return self._sender.health()

    def submit_events(self, *events: tuple[TopicSpec, Event]) -> bool:
        """Queue ready-made events."""
        return self._sender.submit(list, events)

    def submit_built(self, build: Build, *args: Any) -> bool:
        """Queue ``build(*args)``, called by the sender (the gateway builds and redacts its events
        there, off the request path); an exception in it loses that call's events only, counted in
        ``stats.encode_errors``. With the process sender, ``build`` and ``args`` must pickle (a
        module-level function); a call that does not is counted there too, and logged."""
        return self._sender.submit(build, *args)

    def flush(self, timeout_s: float = 30) -> bool:
        return self._sender.flush(timeout_s)

    def close(self, timeout_s: float = 30) -> bool:
        return self._sender.close(timeout_s)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InferenceLogger(_Client):
    topics = (REQUESTED, COMPLETED)

    def log(
        self,
        *,
        model: str,
        completion: str = "",
        latency_ms: float,
        prompt: str | None = None,
        messages: list[dict[str, str]] | None = None,
        version: str = "base",
        request_id: str | None = None,
        status: str = "ok",
        error: str | None = None,
        ttft_ms: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost: float | Decimal = 0,
        finish_reason: str | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        training_opt_out: bool = False,
        params: dict[str, str] | None = None,
        choices: Sequence[str | Mapping[str, Any]] | None = None,
    ) -> str:
        """Queue one call as InferenceRequested + InferenceCompleted; returns its request_id.

        ``choices``: every choice of an n > 1 response, in order, each its text or a mapping with
        ``completion`` and optionally ``finish_reason`` and ``completion_tokens``. Choice 0 is also
        the event's ``completion`` (give ``completion`` only if it is the same text); feedback can
        then rate each choice (``FeedbackClient.send(choice=k)``)."""
        if prompt is None and not messages:
            raise LoggerMisuse("log() needs prompt= or messages=")
        listed: list[dict[str, Any]] = []
        if choices is not None and len(choices) > 1:
            listed = _choices(choices)
            first = listed[0]
            if completion and completion != first["completion"]:
                raise LoggerMisuse("completion= differs from choices[0]; give one or the same text")
            completion = first["completion"]
            finish_reason = finish_reason or first["finish_reason"]
            completion_tokens = completion_tokens or sum(c["completion_tokens"] for c in listed)
        if latency_ms < 0 or latency_ms != latency_ms:
            raise LoggerMisuse(f"latency_ms={latency_ms}: must be a number >= 0")
        if status not in ("ok", "error"):
            raise LoggerMisuse(f"status={status!r}: 'ok' or 'error'")
        rid = request_id or uuid.uuid4().hex
        now = _ms_time(time.time())
        # one tuple queued per call (see sender's doc: fewer objects for the garbage collector)
        self._sender.submit(
            _build_inference,
            self._me,
            model,
            completion,
            latency_ms,
            prompt,
            messages,
            version,
            rid,
            status,
            error,
            ttft_ms,
            prompt_tokens,
            completion_tokens,
            cost,
            finish_reason,
            user_id,
            session_id,
            training_opt_out,
            params,
            listed,
            now,
        )
        return rid

    def _build(
        self,
        model: str,
        completion: str,
        latency_ms: float,
        prompt: str | None,
        messages: list[dict[str, str]] | None,
        version: str,
        rid: str,
        status: str,
        error: str | None,
        ttft_ms: float | None,
        prompt_tokens: int,
        completion_tokens: int,
        cost: float | Decimal,
        finish_reason: str | None,
        user_id: str | None,
        session_id: str | None,
        opt_out: bool,
        params: dict[str, str] | None,
        choices: list[dict[str, Any]],
        at: datetime,
    ) -> list[tuple[TopicSpec, Event | dict[str, Any]]]:
        # Hot path of the sender thread: build the Avro records without pydantic (the arguments were
        # checked in log(); the Avro codec checks every type on encode). Less time holding the GIL here is
        # less time an application thread waits in log().
        r = self.redact
        msgs = [{"role": m["role"], "content": r(m["content"])} for m in (messages or [])]
        text = r(prompt) if prompt is not None else "\n".join(f"{m['role']}: {m['content']}" for m in msgs)
        common: dict[str, Any] = dict(
            producer=self.producer_name,
            request_id=rid,
            occurred_at=at,
            model=model,
            version=version,
            user_id=user_id,
            session_id=session_id,
            training_opt_out=opt_out,
        )
        req = InferenceRequested.avro_record(
            **common,
            endpoint=Endpoint.external,
            prompt=text,
            messages=msgs,
            params=params or {},
        )
        done = InferenceCompleted.avro_record(
            **common,
            status=CompletionStatus(status),
            error_kind="external" if error else None,
            error_message=error,
            completion=r(completion),
            finish_reason=finish_reason,
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            tokens_per_s=completion_tokens / (latency_ms / 1000)
            if latency_ms > 0 and completion_tokens
            else None,
            cost=Decimal(str(cost)).quantize(Decimal("0.000000001")),
            engine_seconds=latency_ms / 1000,
            choices=[{**c, "completion": r(c["completion"])} for c in choices],
        )
        return [(REQUESTED, req), (COMPLETED, done)]


_build_inference = InferenceLogger._build  # a plain function: queuing it allocates no bound method


def _choices(choices: Sequence[str | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``log(choices=...)`` as CompletionChoice records (checked here, in the caller's thread)."""
    out = []
    for index, c in enumerate(choices):
        item = {"completion": c} if isinstance(c, str) else c
        if not isinstance(item, Mapping) or not isinstance(item.get("completion"), str):
            raise LoggerMisuse(f"choices[{index}]: a string or a mapping with completion= (a string)")
        unknown = sorted(set(item) - {"completion", "finish_reason", "completion_tokens"})
        if unknown:
            raise LoggerMisuse(f"choices[{index}]: unknown key(s) {', '.join(unknown)}")
        tokens = item.get("completion_tokens", 0)
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            raise LoggerMisuse(f"choices[{index}].completion_tokens={tokens!r}: an int >= 0")
        finish = item.get("finish_reason")
        if finish is not None and not isinstance(finish, str):
            raise LoggerMisuse(f"choices[{index}].finish_reason={finish!r}: a string")
        out.append(
            {
                "index": index,
                "completion": item["completion"],
                "finish_reason": finish,
                "completion_tokens": tokens,
            }
        )
    return out


class FeedbackClient(_Client):
    topics = (FEEDBACK,)

    def send(
        self,
        request_id: str,
        kind: str,
        value: float | None = None,
        *,
        model: str,
        version: str = "base",
        scale_max: float | None = None,
        correction: str | None = None,
        other_request_id: str | None = None,
        comment: str | None = None,
        user_id: str | None = None,
        source: str = "user",
        evaluator: str | None = None,
        event_id: uuid.UUID | None = None,
        choice: int = 0,
    ) -> None:
        """Queue one FeedbackSubmitted. ``event_id`` makes a repeated vote the same event (the
        streams count it once); by default every call is a new event. ``choice`` names the choice
        of an n > 1 response that the feedback rates."""
        try:
            fk, fs = FeedbackKind(kind), FeedbackSource(source)
        except ValueError as exc:
            raise LoggerMisuse(f"{exc}; kinds: {', '.join(k.value for k in FeedbackKind)}") from None
        if fk == FeedbackKind.correction and not correction:
            raise LoggerMisuse("a correction needs correction='the right answer'")
        if fk not in (FeedbackKind.correction,) and value is None:
            raise LoggerMisuse(f"{kind} feedback needs a value")
        if not isinstance(choice, int) or choice < 0:
            raise LoggerMisuse(f"choice={choice!r}: the index of one of the response's choices (0 for n = 1)")
        if fk == FeedbackKind.preference and not other_request_id:
            raise LoggerMisuse("a preference needs other_request_id (the response it is compared with)")
        event = FeedbackSubmitted(
            **({"event_id": event_id} if event_id is not None else {}),
            producer=self.producer_name,
            request_id=request_id,
            model=model,
            version=version,
            kind=fk,
            value=value,
            scale_max=scale_max,
            other_request_id=other_request_id,
            correction=self.redact(correction) if correction else None,
            comment=self.redact(comment) if comment else None,
            source=fs,
            evaluator=evaluator,
            user_id=user_id,
            choice=choice,
        )
        self._sender.submit(list, ((FEEDBACK, event),))

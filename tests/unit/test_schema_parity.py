"""Each pydantic model mirrors its .avsc exactly, and every event round-trips through Avro."""

from __future__ import annotations

import io
import json
import types
import typing
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import fastavro
import pytest
from pydantic import BaseModel

from schemas import events as ev
from schemas.topics import ALL_TOPICS

SCHEMAS = {t.event: json.loads(t.schema_path.read_text()) for t in ALL_TOPICS}
_PRIMITIVES: dict[str, Any] = {
    "string": str,
    "int": int,
    "long": int,
    "double": float,
    "float": float,
    "boolean": bool,
    "bytes": bytes,
}
_LOGICAL: dict[str, Any] = {"uuid": uuid.UUID, "timestamp-millis": datetime, "decimal": Decimal}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        assert len(rest) == 1
        return rest[0], True
    return tp, False


def _assert_type(avro: Any, tp: Any, where: str) -> None:
    if isinstance(avro, list):
        assert avro[0] == "null" and len(avro) == 2, f"{where}: unions must be [null, T]"
        inner, optional = _unwrap_optional(tp)
        assert optional, f"{where}: avro is nullable but the model is not Optional"
        _assert_type(avro[1], inner, where)
        return
    _, optional = _unwrap_optional(tp)
    assert not optional, f"{where}: model is Optional but avro is not nullable"
    if isinstance(avro, str):
        assert tp is _PRIMITIVES[avro], f"{where}: {avro} vs {tp}"
        return
    if "logicalType" in avro:
        assert tp is _LOGICAL[avro["logicalType"]], f"{where}: {avro} vs {tp}"
    elif avro["type"] == "enum":
        assert issubclass(tp, Enum) and [m.value for m in tp] == avro["symbols"], where
    elif avro["type"] == "array":
        assert typing.get_origin(tp) is list, where
        _assert_type(avro["items"], typing.get_args(tp)[0], where + "[]")
    elif avro["type"] == "map":
        assert typing.get_origin(tp) is dict and typing.get_args(tp)[0] is str, where
        _assert_type(avro["values"], typing.get_args(tp)[1], where + "{}")
    elif avro["type"] == "record":
        assert issubclass(tp, BaseModel), where
        _assert_record(avro, tp, where)
    else:
        raise AssertionError(f"{where}: unhandled avro type {avro}")


def _assert_record(schema: dict, model: type[BaseModel], where: str) -> None:
    fields = model.model_fields
    avro_names = [f["name"] for f in schema["fields"]]
    assert set(avro_names) == set(fields), f"{where}: fields differ: {set(avro_names) ^ set(fields)}"
    for f in schema["fields"]:
        name = f["name"]
        assert f.get("doc"), f"{where}.{name} has no doc"
        info = fields[name]
        _assert_type(f["type"], info.annotation, f"{where}.{name}")
        if "default" in f:
            model_default = info.get_default(call_default_factory=True)
            if isinstance(model_default, Enum):
                model_default = model_default.value
            assert model_default == f["default"] or (f["default"] is None and model_default is None), (
                f"{where}.{name}: default {model_default!r} vs avro {f['default']!r}"
            )
        elif name not in ("event_id", "occurred_at"):  # those two are generated per event
            assert info.is_required(), f"{where}.{name}: avro has no default, the model must require it"


@pytest.mark.parametrize("event", ev.ALL_EVENTS, ids=lambda e: e.__name__)
def test_model_mirrors_schema(event: type[ev.Event]) -> None:
    schema = SCHEMAS[event]
    assert schema["name"] == event.avro_name and schema.get("doc")
    _assert_record(schema, event, event.__name__)


def test_every_event_has_a_topic() -> None:
    assert set(SCHEMAS) == set(ev.ALL_EVENTS)


def _roundtrip(event: ev.Event) -> ev.Event:
    schema = fastavro.parse_schema(SCHEMAS[type(event)])
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, event.to_avro())
    buf.seek(0)
    return type(event).from_avro(fastavro.schemaless_reader(buf, schema, schema))


LONG = "lorem ipsum " * 20_000  # 240 kB prompt
EDGE_TEXT = ["", "ünïcødé 🤖 中文", "quote ' \" \\ NUL \x00", LONG]


def samples() -> list[ev.Event]:
    m = {"model": "smollm2-135m-instruct", "version": "v-1", "adapter": "v-1"}
    out: list[ev.Event] = []
    for text in EDGE_TEXT:
        out += [
            ev.InferenceRequested(
                producer="t",
                request_id="r1",
                endpoint=ev.Endpoint.chat,
                prompt=text,
                messages=[ev.ChatMessage(role="user", content=text)],
                max_tokens=16,
                temperature=0.0,
                params={"stop": '["\\n"]'},
                user_id="u",
                **m,
            ),
            ev.InferenceCompleted(
                producer="t",
                request_id="r1",
                status=ev.CompletionStatus.ok,
                completion=text,
                finish_reason="stop",
                latency_ms=12.5,
                ttft_ms=3.25,
                prompt_tokens=10,
                completion_tokens=4,
                tokens_per_s=320.0,
                cost=Decimal("0.000001234"),
                **m,
            ),
            ev.FeedbackSubmitted(
                producer="t",
                request_id="r1",
                kind=ev.FeedbackKind.correction,
                correction=text,
                source=ev.FeedbackSource.user,
                **m,
            ),
            ev.EvaluationRequested(
                producer="t",
                request_id="r1",
                prompt=text,
                reference=text,
                params={"expect_regex": "\\d+"},
                choices=[
                    ev.CompletionChoice(index=i, completion=text, completion_tokens=i) for i in range(2)
                ],
                **m,
            ),
            ev.RewardedSample(
                producer="t",
                request_id="r1",
                prompt=text,
                completion=text,
                reward=-1.0,
                reward_sources=[
                    ev.RewardSource(
                        source=ev.FeedbackSource.evaluator, kind="exact_match", name="arith", value=-1.0
                    )
                ],
                **m,
            ),
        ]
    # optional fields left out entirely
    out += [
        ev.InferenceRequested(producer="sdk", endpoint=ev.Endpoint.external, prompt="p", model="gpt-x"),
        ev.InferenceCompleted(
            producer="sdk",
            status=ev.CompletionStatus.error,
            error_kind="timeout",
            latency_ms=30_000.0,
            cost=Decimal(0),
            model="gpt-x",
        ),
        ev.FeedbackSubmitted(
            producer="sdk",
            kind=ev.FeedbackKind.thumbs,
            value=1.0,
            source=ev.FeedbackSource.user,
            model="gpt-x",
        ),
        ev.MetricsWindow(
            producer="streams",
            model="m",
            version="base",
            window_start=datetime(2026, 1, 1, tzinfo=UTC),
            window_end=datetime(2026, 1, 1, 0, 1, tzinfo=UTC),
            window_size_s=60,
            window_kind=ev.WindowKind.tumbling,
            requests=0,
            errors=0,
            error_rate=0.0,
            prompt_tokens=0,
            completion_tokens=0,
            cost_total=Decimal(0),
            latency_sketch=b"\x00\x01",
        ),
        ev.ModelVersionEvent(
            producer="trainer",
            kind=ev.VersionEventKind.published,
            model="m",
            version="v-1",
            parent_version="base",
            adapter_uri="file:///a",
            adapter_sha256="ab" * 32,
            lineage=[
                ev.OffsetRange(
                    topic="llm.samples.rewarded", partition=0, first_offset=0, last_offset=99, samples=100
                )
            ],
            eval={"accuracy": 0.5},
            decision="publish",
            reasons=["+12 points"],
        ),
        ev.TrainingRunEvent(
            producer="trainer",
            kind=ev.TrainingRunKind.finished,
            run_id="r",
            model="m",
            parent_version="base",
            method="grpo",
            status=ev.TrainingRunStatus.rejected,
        ),
    ]
    return out


@pytest.mark.parametrize("event", samples(), ids=lambda e: f"{type(e).__name__}")
def test_roundtrip(event: ev.Event) -> None:
    assert _roundtrip(event) == event


def test_an_unvalidated_avro_record_is_the_validated_event_as_avro() -> None:
    """``Event.avro_record`` (the SDK's hot path) gives the record the pydantic model gives: every
    default filled (factories called per record), and it encodes to the same bytes."""
    at = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
    given = dict(
        event_id=uuid.UUID(int=7),
        occurred_at=at,
        producer="sdk:test",
        model="m",
        status=ev.CompletionStatus.ok,
        latency_ms=12.5,
        cost=Decimal("0.000001000"),
    )
    fast = ev.InferenceCompleted.avro_record(**given)
    slow = ev.InferenceCompleted(**given).to_avro()
    assert fast == slow
    schema = fastavro.parse_schema(SCHEMAS[ev.InferenceCompleted])
    a, b = io.BytesIO(), io.BytesIO()
    fastavro.schemaless_writer(a, schema, fast)
    fastavro.schemaless_writer(b, schema, slow)
    assert a.getvalue() == b.getvalue()
    # factory defaults are made per record, not shared
    one = ev.InferenceRequested.avro_record(producer="p", model="m", endpoint=ev.Endpoint.external, prompt="x")
    two = ev.InferenceRequested.avro_record(producer="p", model="m", endpoint=ev.Endpoint.external, prompt="x")
    assert one["event_id"] != two["event_id"] and one["messages"] is not two["messages"]

"""Pydantic v2 models that mirror ``schemas/avro/*.avsc`` (the source of truth).

tests/unit/test_schema_parity.py proves each model has exactly its schema's
fields, types and defaults, and round-trips through Avro.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from functools import cache
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    # Avro timestamp-millis keeps milliseconds only; truncate so round-trips are exact.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class Endpoint(StrEnum):
    chat = "chat"
    completion = "completion"
    external = "external"


class CompletionStatus(StrEnum):
    ok = "ok"
    error = "error"


class FeedbackKind(StrEnum):
    thumbs = "thumbs"
    rating = "rating"
    score = "score"
    preference = "preference"
    correction = "correction"


class FeedbackSource(StrEnum):
    user = "user"
    evaluator = "evaluator"


class WindowKind(StrEnum):
    tumbling = "tumbling"
    hopping = "hopping"


class VersionEventKind(StrEnum):
    published = "published"
    promoted = "promoted"
    rolled_back = "rolled_back"
    rejected = "rejected"
    ramped = "ramped"
    tainted = "tainted"


class TaintPolicy(StrEnum):
    retire = "retire"
    retrain = "retrain"


class TrainingRunKind(StrEnum):
    started = "started"
    finished = "finished"


class TrainingRunStatus(StrEnum):
    published = "published"
    rejected = "rejected"
    failed = "failed"


class Event(BaseModel):
    """Envelope shared by every event. ``avro_name`` names the record in schemas/avro."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False)
    avro_name: ClassVar[str]

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: datetime = Field(default_factory=utcnow)
    producer: str
    schema_version: int = 1
    trace_id: str | None = None

    def to_avro(self) -> dict[str, Any]:
        """Plain dict for the Avro codec (enums as their string values)."""
        return self.model_dump(mode="python")

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> Any:
        return cls.model_validate(record)

    @classmethod
    def avro_record(cls, **values: Any) -> dict[str, Any]:
        """The Avro record of an event with ``values`` and the fields' defaults, *unvalidated*: for
        hot paths whose caller checked the values (the Avro codec still checks every type on encode). A
        quarter of ``model_construct``'s time: a dict, no model object."""
        static, factories = _defaults(cls)
        record = {**static, **values}
        for name, make in factories:
            if name not in values:
                record[name] = make()
        return record


class RequestEvent(Event):
    request_id: str | None = None


class ModelRef(BaseModel):
    model: str
    version: str = "base"
    adapter: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str
    content: str


class InferenceRequested(RequestEvent, ModelRef):
    avro_name: ClassVar[str] = "InferenceRequested"
    endpoint: Endpoint
    prompt: str
    messages: list[ChatMessage] = Field(default_factory=list)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    params: dict[str, str] = Field(default_factory=dict)
    user_id: str | None = None
    session_id: str | None = None
    training_opt_out: bool = False


class CompletionChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int
    completion: str
    finish_reason: str | None = None
    completion_tokens: int = 0


class InferenceCompleted(RequestEvent, ModelRef):
    avro_name: ClassVar[str] = "InferenceCompleted"
    status: CompletionStatus
    error_kind: str | None = None
    error_message: str | None = None
    completion: str = ""
    finish_reason: str | None = None
    latency_ms: float
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_per_s: float | None = None
    cost: Decimal
    engine_seconds: float = 0.0
    user_id: str | None = None
    session_id: str | None = None
    training_opt_out: bool = False
    choices: list[CompletionChoice] = Field(default_factory=list)


class FeedbackSubmitted(RequestEvent, ModelRef):
    avro_name: ClassVar[str] = "FeedbackSubmitted"
    kind: FeedbackKind
    value: float | None = None
    scale_max: float | None = None
    other_request_id: str | None = None
    correction: str | None = None
    comment: str | None = None
    source: FeedbackSource
    evaluator: str | None = None
    user_id: str | None = None
    choice: int = Field(0, ge=0)


class EvaluationRequested(RequestEvent, ModelRef):
    """A joined request and response for the evaluators (streams/evaluate_stage.py scores it)."""

    avro_name: ClassVar[str] = "EvaluationRequested"
    prompt: str
    reference: str | None = None
    params: dict[str, str] = Field(default_factory=dict)
    choices: list[CompletionChoice]


class RewardSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: FeedbackSource
    kind: str
    name: str | None = None
    value: float
    weight: float = 1.0
    event_id: str | None = None


class RewardedSample(RequestEvent, ModelRef):
    avro_name: ClassVar[str] = "RewardedSample"
    prompt: str
    messages: list[ChatMessage] = Field(default_factory=list)
    completion: str
    reward: float
    reward_sources: list[RewardSource]
    reference: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    user_id: str | None = None
    choice: int = 0


class MetricsWindow(Event, ModelRef):
    avro_name: ClassVar[str] = "MetricsWindow"
    window_start: datetime
    window_end: datetime
    window_size_s: int
    window_kind: WindowKind
    final: bool = True
    requests: int
    errors: int
    error_rate: float
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    ttft_p99_ms: float | None = None
    tokens_per_s: float | None = None
    prompt_tokens: int
    completion_tokens: int
    cost_total: Decimal
    cost_per_request: float | None = None
    cost_per_1k_tokens: float | None = None
    reward_count: int = 0
    reward_mean: float | None = None
    thumbs_up: int = 0
    thumbs_down: int = 0
    thumbs_up_rate: float | None = None
    feedback_coverage: float | None = None
    latency_sketch: bytes | None = None


class OffsetRange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    samples: int


class ModelVersionEvent(Event):
    avro_name: ClassVar[str] = "ModelVersionEvent"
    kind: VersionEventKind
    model: str
    version: str
    parent_version: str | None = None
    adapter_uri: str | None = None
    adapter_sha256: str | None = None
    method: str | None = None
    hyperparameters: dict[str, str] = Field(default_factory=dict)
    lineage: list[OffsetRange] = Field(default_factory=list)
    eval: dict[str, float] = Field(default_factory=dict)
    traffic_share: float | None = None
    decision: str
    reasons: list[str] = Field(default_factory=list)
    actor: str | None = None


class TrainingRunEvent(Event):
    avro_name: ClassVar[str] = "TrainingRunEvent"
    kind: TrainingRunKind
    run_id: str
    model: str
    parent_version: str
    method: str
    samples: int = 0
    config: dict[str, str] = Field(default_factory=dict)
    status: TrainingRunStatus | None = None
    version: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    error: str | None = None


class SamplePosition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: str
    partition: int
    offset: int


class UserErased(Event):
    avro_name: ClassVar[str] = "UserErased"
    user_id: str
    actor: str
    reason: str | None = None
    policy: TaintPolicy = TaintPolicy.retire
    requests: int = 0
    deleted: dict[str, int] = Field(default_factory=dict)
    samples: list[SamplePosition] = Field(default_factory=list)
    tainted_versions: list[str] = Field(default_factory=list)
    retired_versions: list[str] = Field(default_factory=list)
    kafka_held_until: datetime | None = None


ALL_EVENTS: tuple[type[Event], ...] = (
    InferenceRequested,
    InferenceCompleted,
    FeedbackSubmitted,
    EvaluationRequested,
    RewardedSample,
    MetricsWindow,
    ModelVersionEvent,
    TrainingRunEvent,
    UserErased,
)


@cache
def _defaults(cls: type[Event]) -> tuple[dict[str, Any], tuple[tuple[str, Any], ...]]:
    """``cls``'s plain defaults, and the fields whose default is made by a factory."""
    static: dict[str, Any] = {}
    factories = []
    for name, info in cls.model_fields.items():
        if info.default_factory is not None:
            factories.append((name, info.default_factory))
        elif not info.is_required():
            static[name] = info.default
    return static, tuple(factories)

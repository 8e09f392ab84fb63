"""Every topic, its event, its key rule and its Kafka settings, in one place.

Keys: ``request_id`` for everything about one request (request, response,
feedback and the rewarded sample land on one partition, so joins stay local);
``model|version`` for metrics windows and for the compacted, single-partition
``model.versions`` topic (see VERSIONS). Dead letters go to ``<topic>.dlq`` with the original bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from schemas.events import (
    EvaluationRequested,
    Event,
    FeedbackSubmitted,
    InferenceCompleted,
    InferenceRequested,
    MetricsWindow,
    ModelVersionEvent,
    RewardedSample,
    TrainingRunEvent,
    UserErased,
)

AVRO_DIR = Path(__file__).resolve().parent / "avro"
DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    event: type[Event]
    key: str
    doc: str
    config: dict[str, str] = field(default_factory=dict)
    compacted: bool = False
    partitions: int | None = None  # None: the KafkaSettings default
    stored: bool = True  # False: work in flight between stream stages, not sunk into ClickHouse

    @property
    def subject(self) -> str:
        return f"{self.name}-value"

    @property
    def dlq(self) -> str:
        return f"{self.name}.dlq"

    @property
    def schema_path(self) -> Path:
        return AVRO_DIR / f"{self.event.avro_name}.avsc"

    def key_of(self, event: Event) -> str:
        """The Kafka key for an event of this topic (raises KeyError if it has none)."""
        if self.key == "model|version":
            model, version = (getattr(event, attr) for attr in ("model", "version"))
            return f"{model}|{version}"
        value = getattr(event, self.key)
        if value is None:
            raise KeyError(f"{type(event).__name__} on {self.name} needs {self.key} (the Kafka key)")
        return str(value)


_RETAIN_7D = {"retention.ms": str(7 * DAY_MS), "cleanup.policy": "delete"}

REQUESTED = TopicSpec(
    "llm.inference.requested",
    InferenceRequested,
    "request_id",
    "Every inference request (gateway or SDK).",
    _RETAIN_7D,
)
COMPLETED = TopicSpec(
    "llm.inference.completed",
    InferenceCompleted,
    "request_id",
    "Every response or error, with latency, tokens and cost.",
    _RETAIN_7D,
)
FEEDBACK = TopicSpec(
    "llm.feedback.submitted",
    FeedbackSubmitted,
    "request_id",
    "User and evaluator feedback on responses.",
    {"retention.ms": str(30 * DAY_MS)},
)
# The join's hand-off to the evaluators: scoring runs in its own transactional stage, outside the join's
# transaction, so a slow evaluator delays scores, never the join. Its scores are FEEDBACK (stored there).
EVALUATIONS = TopicSpec(
    "llm.evaluations.requested",
    EvaluationRequested,
    "request_id",
    "Joined request+response awaiting the evaluators (the join -> the evaluate stage).",
    # read within seconds; a day (and hour-long segments: a segment is deleted whole, once its newest
    # record is past retention) bounds how long these redacted prompts and answers stay in Kafka
    {"retention.ms": str(DAY_MS), "segment.ms": str(3600 * 1000), "cleanup.policy": "delete"},
    stored=False,
)
REWARDED = TopicSpec(
    "llm.samples.rewarded",
    RewardedSample,
    "request_id",
    "Joined request+response+reward: the trainer's input.",
    {"retention.ms": str(30 * DAY_MS)},
)
METRICS = TopicSpec(
    "llm.metrics.window",
    MetricsWindow,
    "model|version",
    "Closed (and open-snapshot) metric windows per model version.",
    _RETAIN_7D,
)
# Keyed by model|version, not by model alone: compaction keeps the latest event
# per key, and a server rebuilding its routing table needs every live version's
# last state, not just the model's last event. One partition keeps all versions
# of all models in one order (promote after publish, rollback after promote).
VERSIONS = TopicSpec(
    "model.versions",
    ModelVersionEvent,
    "model|version",
    "Model version lifecycle; compacted, read from the start by every server.",
    {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
    compacted=True,
    partitions=1,
)
TRAINING = TopicSpec(
    "trainer.runs",
    TrainingRunEvent,
    "model",
    "Training run start/finish events.",
    {"retention.ms": str(90 * DAY_MS)},
)

# The standing list of erased people: compacted (one record per user, never expired), read by every
# training run to keep their samples out even while copies of their events sit in Kafka's retention.
ERASURES = TopicSpec(
    "privacy.erasures",
    UserErased,
    "user_id",
    "Erasure requests carried out (`rftloop forget`); compacted, the trainer's exclusion list.",
    {"cleanup.policy": "compact"},
    compacted=True,
    partitions=1,
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    REQUESTED,
    COMPLETED,
    FEEDBACK,
    EVALUATIONS,
    REWARDED,
    METRICS,
    VERSIONS,
    TRAINING,
    ERASURES,
)
BY_NAME: dict[str, TopicSpec] = {t.name: t for t in ALL_TOPICS}
STORED_TOPICS: tuple[TopicSpec, ...] = tuple(t for t in ALL_TOPICS if t.stored)  # the sink's
DLQ_CONFIG = {"retention.ms": str(30 * DAY_MS), "cleanup.policy": "delete"}


def spec(name: str) -> TopicSpec:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown topic {name!r}; known: {', '.join(BY_NAME)}") from None

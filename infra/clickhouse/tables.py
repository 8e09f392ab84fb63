"""ClickHouse tables for the event topics, derived from the Avro schemas.

One raw table per topic, one column per top-level Avro field (same name), plus
the Kafka coordinates. ``ReplacingMergeTree`` ordered by ``event_id`` makes the
at-least-once sink idempotent: a replayed event collapses into one row (read
with ``FINAL`` or ``LIMIT 1 BY event_id`` for exact counts before merges).

The DDL is generated here from the .avsc files and committed as the versioned
migration ``migrations/0001_event_tables.sql``; a test keeps the two equal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from schemas.topics import ALL_TOPICS, TopicSpec

KAFKA_COLUMNS = [("_topic", "LowCardinality(String)"), ("_partition", "UInt32"), ("_offset", "UInt64")]
TABLE_NAMES = {  # by event (Avro record name)
    "InferenceRequested": "inference_requested",
    "InferenceCompleted": "inference_completed",
    "FeedbackSubmitted": "feedback_submitted",
    "RewardedSample": "rewarded_samples",
    "MetricsWindow": "metrics_windows",
    "ModelVersionEvent": "model_versions",
    "TrainingRunEvent": "training_runs",
    "UserErased": "user_erasures",
}


def _ch_type(avro: Any) -> tuple[str, bool]:
    """(ClickHouse type, stored as JSON text) for an Avro type."""
    if isinstance(avro, list):
        inner = [t for t in avro if t != "null"]
        base, as_json = _ch_type(inner[0])
        if as_json or base.startswith(("Array", "Map")):
            return base, as_json
        if base.startswith("LowCardinality("):
            return f"LowCardinality(Nullable({base[len('LowCardinality(') : -1]}))", False
        return f"Nullable({base})", False
    if isinstance(avro, str):
        return {
            "string": "String",
            "bytes": "String",
            "int": "Int32",
            "long": "Int64",
            "float": "Float32",
            "double": "Float64",
            "boolean": "Bool",
        }[avro], False
    logical = avro.get("logicalType")
    if logical == "uuid":
        return "UUID", False
    if logical == "timestamp-millis":
        return "DateTime64(3, 'UTC')", False
    if logical == "decimal":
        return f"Decimal({avro['precision']}, {avro['scale']})", False
    kind = avro["type"]
    if kind == "enum":
        return "LowCardinality(String)", False
    if kind == "map":
        value, as_json = _ch_type(avro["values"])
        return ("String", True) if as_json else (f"Map(String, {value})", False)
    if kind == "array":
        if isinstance(avro["items"], str):
            return f"Array({_ch_type(avro['items'])[0]})", False
        return "String", True  # arrays of records: JSON text, query with JSONExtract
    if kind == "record":
        return "String", True
    return _ch_type(kind)


@dataclass(frozen=True)
class EventTable:
    topic: TopicSpec
    name: str
    columns: list[tuple[str, str]]  # (name, ClickHouse type), Avro fields first
    json_columns: frozenset[str]

    @property
    def field_names(self) -> list[str]:
        return [c for c, _ in self.columns if c not in dict(KAFKA_COLUMNS)]

    @property
    def column_names(self) -> list[str]:
        return [c for c, _ in self.columns]

    def ddl(self, database: str) -> str:
        cols = ",\n".join(f"    `{n}` {t}" for n, t in self.columns)
        return (
            f"CREATE TABLE IF NOT EXISTS {database}.{self.name}\n(\n{cols}\n)\n"
            "ENGINE = ReplacingMergeTree\n"
            "PARTITION BY toYYYYMM(occurred_at)\n"
            "ORDER BY event_id"
        )

    def row(self, record: dict[str, Any], partition: int, offset: int) -> list[Any]:
        """One insert row from a decoded Avro record (same order as ``column_names``)."""
        out: list[Any] = []
        for name in self.field_names:
            value = record.get(name)
            if name in self.json_columns:
                value = json.dumps(value, default=_json_default, ensure_ascii=False)
            elif isinstance(value, bytes):
                value = value.decode("latin-1")
            out.append(value)
        out += [self.topic.name, partition, offset]
        return out


def _json_default(v: Any) -> Any:
    if isinstance(v, (UUID, Decimal)):
        return str(v)
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.hex()
    raise TypeError(type(v).__name__)


def event_table(topic: TopicSpec) -> EventTable:
    schema = json.loads(topic.schema_path.read_text())
    columns: list[tuple[str, str]] = []
    json_cols = set()
    for f in schema["fields"]:
        ch, as_json = _ch_type(f["type"])
        columns.append((f["name"], ch))
        if as_json:
            json_cols.add(f["name"])
    return EventTable(
        topic, TABLE_NAMES[topic.event.avro_name], columns + KAFKA_COLUMNS, frozenset(json_cols)
    )


def all_tables() -> list[EventTable]:
    return [event_table(t) for t in ALL_TOPICS]


def render_migration(database: str = "{database}") -> str:
    header = (
        "-- 0001: raw event tables, one per topic (generated from schemas/avro by\n"
        "-- infra/clickhouse/tables.py; tests/unit/test_clickhouse_tables.py keeps them equal).\n"
    )
    return header + ";\n\n".join(t.ddl(database) for t in all_tables()) + ";\n"

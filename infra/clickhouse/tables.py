"""ClickHouse tables for the event topics, derived from the Avro schemas.

One raw table per topic, one column per top-level Avro field (same name), plus
the Kafka coordinates. ``ReplacingMergeTree`` ordered by ``event_id`` makes the
at-least-once sink idempotent: a replayed event collapses into one row (read
with ``FINAL`` or ``LIMIT 1 BY event_id`` for exact counts before merges).

The DDL is generated here from the .avsc files and committed as the versioned
migration ``migrations/0001_event_tables.sql``; a field added to a schema later gets its
``ALTER TABLE ... ADD COLUMN`` migration (0007: the choices of n > 1 responses). A unit test
checks that the migrations create every column derived here. Migration 0008 keeps parts compact
up to 128 MiB, so a sink batch is written as one data file per part, not two per column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from schemas.topics import STORED_TOPICS, TopicSpec

AVRO_FORMAT = "AvroConfluent"
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


_PRIMITIVES = {
    "string": "String",
    "bytes": "String",
    "int": "Int32",
    "long": "Int64",
    "float": "Float32",
    "double": "Float64",
    "boolean": "Bool",
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
        return _PRIMITIVES[avro], False
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
    # JSON columns as ClickHouse reads them from Avro (Array(Tuple(...))); None for a column whose
    # nested types JSON would render differently from ``row`` (timestamps, uuids, bytes)
    nested: dict[str, str | None] = field(default_factory=dict)

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

    @property
    def clickhouse_decodes(self) -> bool:
        """Whether ClickHouse can decode this topic's framed records itself (``avro_insert_target``)."""
        return all(self.nested.get(c) for c in self.json_columns)

    def avro_insert_target(self, database: str, partition: int, offsets: list[int]) -> str:
        """What follows ``INSERT INTO`` (and precedes ``FORMAT AvroConfluent``) in an INSERT that has
        ClickHouse decode a body of
        Confluent-framed Avro records (format ``AvroConfluent``, writer schemas fetched from the
        registry by id) into this table, in the order sent: JSON columns rendered with toJSONString, ``_topic``/``_partition`` constants
        and each row's ``_offset`` from ``offsets`` (one per record, ascending, held as runs of
        consecutive offsets so the statement stays small). One thread, no parallel parsing: the
        row number is then the record's position in the body."""
        if not self.clickhouse_decodes:
            raise ValueError(f"{self.name}: ClickHouse cannot render its JSON columns as the sink does")
        starts, begins, ends = offset_runs(offsets)
        fields = [(n, t) for n, t in self.columns if n not in dict(KAFKA_COLUMNS)]
        structure = ", ".join(f"`{n}` {self.nested[n] if n in self.json_columns else t}" for n, t in fields)
        picks = ", ".join(f"toJSONString(`{n}`)" if n in self.json_columns else f"`{n}`" for n, _ in fields)
        row = "rowNumberInAllBlocks()"
        run = f"arrayFirstIndex(e -> e > {row}, {ends})"
        offset = f"arrayElement({starts}, {run}) + {row} - arrayElement({begins}, {run})"
        names = ", ".join(f"`{n}`" for n in self.column_names)
        literal = structure.replace("\\", "\\\\").replace("'", "\\'")
        return (
            f"{database}.{self.name} ({names}) "
            f"SELECT {picks}, '{self.topic.name}', {int(partition)}, {offset} "
            f"FROM input('{literal}')"
        )


def offset_runs(offsets: list[int]) -> tuple[list[int], list[int], list[int]]:
    """Ascending ``offsets`` as runs of consecutive ones: (first offset, first index, end index)."""
    starts: list[int] = []
    begins: list[int] = []
    ends: list[int] = []
    for i, o in enumerate(offsets):
        if not starts or o != starts[-1] + (i - begins[-1]):
            if starts:
                ends.append(i)
            starts.append(o)
            begins.append(i)
    if starts:
        ends.append(len(offsets))
    return starts, begins, ends


def _nested(avro: Any) -> str | None:
    """The ClickHouse type that reads an Avro value nested in a JSON column, when toJSONString
    then gives what ``row``'s json.dumps gives (same keys and values; spacing aside)."""
    if isinstance(avro, str):
        return None if avro == "bytes" else _PRIMITIVES.get(avro)  # bytes: JSON would show them as hex
    if isinstance(avro, list):
        inner = [t for t in avro if t != "null"]
        one = _nested(inner[0]) if len(inner) == 1 else None
        return f"Nullable({one})" if one and len(avro) == 2 and "(" not in one else None
    if avro.get("logicalType"):
        return None
    kind = avro["type"]
    if kind == "enum":
        return "String"
    if kind == "array":
        item = _nested(avro["items"])
        return f"Array({item})" if item else None
    if kind == "map":
        value = _nested(avro["values"])
        return f"Map(String, {value})" if value else None
    if kind == "record":
        parts = [(f["name"], _nested(f["type"])) for f in avro["fields"]]
        if not all(t for _, t in parts):
            return None
        return "Tuple(" + ", ".join(f"`{n}` {t}" for n, t in parts) + ")"
    return _nested(kind)


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
    nested: dict[str, str | None] = {}
    for f in schema["fields"]:
        ch, as_json = _ch_type(f["type"])
        columns.append((f["name"], ch))
        if as_json:
            json_cols.add(f["name"])
            nested[f["name"]] = _nested(f["type"])
    return EventTable(
        topic, TABLE_NAMES[topic.event.avro_name], columns + KAFKA_COLUMNS, frozenset(json_cols), nested
    )


def all_tables() -> list[EventTable]:
    return [event_table(t) for t in STORED_TOPICS]


def render_migration(database: str = "{database}") -> str:
    header = (
        "-- 0001: raw event tables, one per topic (generated from schemas/avro by\n"
        "-- infra/clickhouse/tables.py; tests/unit/test_clickhouse_tables.py keeps them equal).\n"
    )
    return header + ";\n\n".join(t.ddl(database) for t in all_tables()) + ";\n"

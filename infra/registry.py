"""Schema registry plumbing: load .avsc files, check evolution, register subjects.

Talks to any Confluent-compatible registry (Apicurio's ccompat API locally)
through confluent-kafka's SchemaRegistryClient.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from infra.settings import RegistrySettings
from schemas.topics import ALL_TOPICS, TopicSpec

COMPATIBILITY = "BACKWARD"


class IncompatibleSchema(ValueError):
    """A schema change would break readers; the message names the field."""


def client(settings: RegistrySettings) -> SchemaRegistryClient:
    return SchemaRegistryClient(settings.client_config())


def load_schema(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def canonical(schema: dict[str, Any]) -> str:
    return json.dumps(schema, separators=(",", ":"))


# -- evolution rules ------------------------------------------------------------

_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


def _type_key(t: Any) -> Any:
    """A comparable description of an Avro type (names for named types, logical types kept)."""
    if isinstance(t, str):
        return t
    if isinstance(t, list):
        return ("union", tuple(_type_key(x) for x in t))
    kind = t["type"]
    if kind in ("record", "enum", "fixed"):
        return (kind, t["name"])
    if kind == "array":
        return ("array", _type_key(t["items"]))
    if kind == "map":
        return ("map", _type_key(t["values"]))
    if "logicalType" in t:
        return (kind, t["logicalType"], t.get("precision"), t.get("scale"))
    return _type_key(kind)


def _readable(writer: Any, reader: Any) -> bool:
    """Can data written with ``writer`` be read as ``reader`` (Avro resolution, simplified)?"""
    wk, rk = _type_key(writer), _type_key(reader)
    if wk == rk:
        return True
    if isinstance(reader, list):
        return (
            any(_readable(writer, r) for r in reader)
            if not isinstance(writer, list)
            else all(any(_readable(w, r) for r in reader) for w in writer)
        )
    if isinstance(writer, list):
        return all(_readable(w, reader) for w in writer)
    if isinstance(wk, str) and isinstance(rk, str):
        return rk in _PROMOTIONS.get(wk, set())
    if isinstance(writer, dict) and isinstance(reader, dict) and writer["type"] == reader["type"]:
        if writer["type"] == "record":
            return not backward_problems(writer, reader)
        if writer["type"] == "enum":
            return set(writer["symbols"]) <= set(reader["symbols"]) or "default" in reader
        if writer["type"] == "array":
            return _readable(writer["items"], reader["items"])
        if writer["type"] == "map":
            return _readable(writer["values"], reader["values"])
    return False


def backward_problems(old: dict[str, Any], new: dict[str, Any], path: str = "") -> list[str]:
    """Why readers using ``new`` could not read data written with ``old`` (BACKWARD).

    Each problem names the field: a new field without a default (also what a
    rename looks like), or a field whose type changed incompatibly.
    """
    problems: list[str] = []
    old_fields = {f["name"]: f for f in old.get("fields", [])}
    for f in new.get("fields", []):
        name = f"{path}{f['name']}"
        if f["name"] not in old_fields:
            aliases = set(f.get("aliases", []))
            if aliases & set(old_fields):
                continue
            if "default" not in f:
                removed = sorted(set(old_fields) - {g["name"] for g in new["fields"]})
                hint = f" (renamed from {', '.join(removed)}? renames break readers)" if removed else ""
                problems.append(
                    f"field '{name}' is new and has no default: old data has no value for it{hint}; "
                    "add a default or use a new topic"
                )
            continue
        old_type, new_type = old_fields[f["name"]]["type"], f["type"]
        if not _readable(old_type, new_type):
            problems.append(
                f"field '{name}' changed type from {json.dumps(old_type)} to {json.dumps(new_type)}: "
                "old data cannot be read as the new type; never retype, add a new field instead"
            )
    return problems


# -- registration ---------------------------------------------------------------


@dataclass(frozen=True)
class SubjectResult:
    subject: str
    schema_id: int
    version: int
    action: str  # registered | unchanged


def check(reg: SchemaRegistryClient, topic: TopicSpec, schema: dict[str, Any]) -> list[str]:
    """Problems with registering ``schema`` for ``topic`` (empty list = fine). Registers nothing."""
    try:
        latest = reg.get_latest_version(topic.subject)
    except SchemaRegistryError as exc:
        if exc.http_status_code == 404:
            return []
        raise
    old = json.loads(latest.schema.schema_str or "{}")
    problems = backward_problems(old, schema)
    if not problems and not reg.test_compatibility(topic.subject, Schema(canonical(schema), "AVRO")):
        problems.append(f"the registry rejects the change to {topic.subject} as not {COMPATIBILITY}")
    return problems


def register(
    reg: SchemaRegistryClient, topic: TopicSpec, schema: dict[str, Any] | None = None
) -> SubjectResult:
    """Check, then register ``schema`` (default: the topic's .avsc) with BACKWARD compatibility."""
    schema = schema if schema is not None else load_schema(topic.schema_path)
    problems = check(reg, topic, schema)
    if problems:
        raise IncompatibleSchema(f"{topic.subject}: " + "; ".join(problems))
    avro = Schema(canonical(schema), "AVRO")
    try:
        found = reg.lookup_schema(topic.subject, avro)
        return SubjectResult(topic.subject, _known(found.schema_id), _known(found.version), "unchanged")
    except SchemaRegistryError as exc:
        if exc.http_status_code != 404:
            raise
    schema_id = reg.register_schema(topic.subject, avro)
    reg.set_compatibility(topic.subject, COMPATIBILITY)
    version = reg.lookup_schema(topic.subject, avro).version
    return SubjectResult(topic.subject, schema_id, _known(version), "registered")


def _known(value: int | None) -> int:
    if value is None:
        raise SchemaRegistryError(500, 50001, "registry answered without an id/version")
    return value


def register_all(reg: SchemaRegistryClient) -> list[SubjectResult]:
    return [register(reg, t) for t in ALL_TOPICS]

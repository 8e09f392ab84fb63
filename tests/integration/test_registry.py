"""The Apicurio ccompat API answers every call our serde makes, as Confluent's would."""

from __future__ import annotations

import json

import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from infra.registry import client


def _schema(*fields: dict) -> Schema:
    return Schema(
        json.dumps({"type": "record", "name": "R", "namespace": "t", "fields": list(fields)}), "AVRO"
    )


def test_register_lookup_latest_by_id_and_compat(stack, unique) -> None:
    reg = client(stack.registry)
    subject = f"s-{unique}-value"
    v1 = _schema({"name": "a", "type": "int"})
    sid = reg.register_schema(subject, v1)
    assert reg.register_schema(subject, v1) == sid  # idempotent
    assert reg.lookup_schema(subject, v1).schema_id == sid
    assert reg.get_latest_version(subject).schema_id == sid
    assert json.loads(reg.get_schema(sid).schema_str)["fields"][0]["name"] == "a"
    reg.set_compatibility(subject, "BACKWARD")
    assert reg.get_compatibility(subject) == "BACKWARD"
    assert reg.test_compatibility(
        subject, _schema({"name": "a", "type": "int"}, {"name": "b", "type": "string", "default": ""})
    )
    assert not reg.test_compatibility(
        subject, _schema({"name": "a", "type": "int"}, {"name": "b", "type": "string"})
    )
    with pytest.raises(SchemaRegistryError) as err:
        reg.get_schema(987654)
    assert err.value.http_status_code == 404

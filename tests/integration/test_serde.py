"""Our serde against the real registry: wire compatibility, evolution both ways, clear misuse errors."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from infra import registry
from infra.serde import SchemaNotRegistered, SerdeError, TopicSerde
from schemas import events as ev
from schemas.topics import COMPLETED, TopicSpec


def _topic(unique: str) -> TopicSpec:
    return replace(COMPLETED, name=f"completed-{unique}")


def _event(**kw) -> ev.InferenceCompleted:  # type: ignore[no-untyped-def]
    fields = {
        "producer": "test",
        "request_id": "r-1",
        "model": "m",
        "status": ev.CompletionStatus.ok,
        "completion": "42",
        "latency_ms": 10.0,
        "cost": Decimal("0.000000100"),
        **kw,
    }
    return ev.InferenceCompleted(**fields)


def _two_versions(stack, unique: str) -> tuple[TopicSerde, TopicSerde]:  # type: ignore[no-untyped-def]
    """Serdes of schema v1 and of v2 (v1 plus a defaulted field), both registered on one topic."""
    reg = registry.client(stack.registry)
    topic = _topic(unique)
    v1 = json.loads(topic.schema_path.read_text())
    v2 = copy.deepcopy(v1)
    v2["fields"].append({"name": "region", "type": "string", "default": "unknown", "doc": "Serving region."})
    registry.register(reg, topic, v1)
    assert registry.register(reg, topic, v2).version == 2
    return TopicSerde(reg, topic, schema=v1), TopicSerde(reg, topic, schema=v2)


def test_registered_schema_roundtrip_and_confluent_interop(stack, unique) -> None:
    reg = registry.client(stack.registry)
    topic = _topic(unique)
    result = registry.register(reg, topic)
    assert result.action == "registered"
    assert registry.register(reg, topic).action == "unchanged"
    serde = TopicSerde(reg, topic)
    event = _event()
    data = serde.encode_event(event)
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == result.schema_id
    assert serde.decode_event(data) == event

    # The stock confluent-kafka path reads our bytes and we read its bytes.
    schema_str = topic.schema_path.read_text()
    ctx = SerializationContext(topic.name, MessageField.VALUE)
    stock_ser = AvroSerializer(
        reg, schema_str, conf={"auto.register.schemas": False, "use.latest.version": True}
    )
    stock_de = AvroDeserializer(reg, schema_str)
    record = event.to_avro()
    assert stock_de(data, ctx) == stock_de(stock_ser(record, ctx), ctx)
    assert serde.decode(stock_ser(record, ctx)) == serde.decode(data)


def test_unregistered_schema_is_a_named_error(stack, unique) -> None:
    serde = TopicSerde(registry.client(stack.registry), _topic(unique))
    with pytest.raises(SchemaNotRegistered, match="rftloop schemas register"):
        serde.encode_event(_event())


def test_evolution_v1_and_v2_read_each_other(stack, unique) -> None:
    s1, s2 = _two_versions(stack, unique)
    rec1 = _event().to_avro()
    rec2 = {**_event(request_id="r-2").to_avro(), "region": "eu-west"}

    # v2 reader, v1 data: the new field takes its default
    assert s2.decode(s1.encode(rec1))["region"] == "unknown"
    # v1 reader, v2 data: the new field is ignored, the rest is intact
    old_view = s1.decode(s2.encode(rec2))
    assert "region" not in old_view and old_view["request_id"] == "r-2"
    assert ev.InferenceCompleted.from_avro(old_view).request_id == "r-2"


def test_incompatible_change_rejected_before_registering(stack, unique) -> None:
    reg = registry.client(stack.registry)
    topic = _topic(unique)
    v1 = json.loads(topic.schema_path.read_text())
    registry.register(reg, topic, v1)
    bad = copy.deepcopy(v1)
    bad["fields"].append({"name": "region", "type": "string", "doc": "no default"})
    with pytest.raises(registry.IncompatibleSchema, match="'region'"):
        registry.register(reg, topic, bad)
    assert [v for v in reg.get_versions(topic.subject)] == [1]  # nothing registered


def test_every_topic_encodes_the_same_bytes_and_reads_the_same_values_as_fastavro(stack, unique) -> None:
    """TopicSerde's bytes and decoded values are fastavro's own with the topic's schema, for every
    event type, edge values included (a faster path must keep them so)."""
    import io

    import fastavro

    from schemas.topics import ALL_TOPICS
    from tests.unit.test_schema_parity import samples

    reg = registry.client(stack.registry)
    by_event = {t.event: replace(t, name=f"{t.name}-{unique}") for t in ALL_TOPICS}
    for event in samples():
        topic = by_event[type(event)]
        registry.register(reg, topic)
        serde = TopicSerde(reg, topic)
        full = fastavro.parse_schema(json.loads(topic.schema_path.read_text()))
        record = event.to_avro()
        before = copy.deepcopy(record)
        data = serde.encode(record)
        assert record == before  # the caller's dict is left as it was
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, full, record)
        assert data[5:] == buf.getvalue(), type(event).__name__
        assert serde.decode(data) == fastavro.schemaless_reader(io.BytesIO(data[5:]), full, None)
    # what fastavro refuses, TopicSerde refuses: a cost with more decimals than the schema's scale
    serde = TopicSerde(reg, by_event[ev.InferenceCompleted])
    with pytest.raises(SerdeError, match="does not fit its schema"):
        serde.encode(_event().to_avro() | {"cost": Decimal("0.0000000001")})
    with pytest.raises(SerdeError):
        serde.encode(_event().to_avro() | {"occurred_at": "yesterday"})


def test_a_body_that_runs_on_stops_short_or_is_not_utf8_is_a_corrupt_body(stack, unique) -> None:
    """The hot decode path (our own schema) refuses what fastavro's path refused: bytes after the
    last field, a body cut short, a string that is not UTF-8. Each is CorruptBody (the DLQ's class)."""
    from infra.serde import CorruptBody

    reg = registry.client(stack.registry)
    topic = _topic(unique)
    registry.register(reg, topic)
    serde = TopicSerde(reg, topic)
    data = serde.encode_event(_event(completion="abc"))
    assert serde.decode(data)["completion"] == "abc"
    with pytest.raises(CorruptBody, match="trailing bytes"):
        serde.decode(data + b"\x00")
    with pytest.raises(CorruptBody, match="EOFError"):
        serde.decode(data[:-3])
    at = data.index(b"abc")
    with pytest.raises(CorruptBody, match="UnicodeDecodeError"):
        serde.decode(data[:at] + b"\xff\xfe\xfd" + data[at + 3 :])


def test_a_record_missing_a_field_without_default_is_refused(stack, unique) -> None:
    reg = registry.client(stack.registry)
    topic = _topic(unique)
    registry.register(reg, topic)
    serde = TopicSerde(reg, topic)
    record = _event().to_avro()
    del record["model"]  # no default in the schema
    with pytest.raises(SerdeError, match="does not fit its schema"):
        serde.encode(record)
    record = _event().to_avro()
    del record["completion"]  # default ""
    assert serde.decode(serde.encode(record))["completion"] == ""


def test_plain_fields_keep_their_avro_values_on_both_decode_paths(stack, unique) -> None:
    """decode(plain=...) leaves the named fields' logical types unconverted, for records of our own
    schema (cavro) and of an older writer schema (fastavro resolves them), and converts the rest."""
    s1, s2 = _two_versions(stack, unique)
    event = _event()
    plain = frozenset({"event_id", "occurred_at"})
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    ms = (event.occurred_at - epoch) // timedelta(milliseconds=1)  # whole ms, as Avro writes it
    for data in (s2.encode_event(event), s1.encode_event(event)):  # own schema, then the older one
        r = s2.decode(data, plain=plain)
        assert r["event_id"] == str(event.event_id) and r["occurred_at"] == ms
        assert r["cost"] == event.cost  # not in plain: converted
        full = s2.decode(data)
        assert full["event_id"] == event.event_id and full["occurred_at"] == event.occurred_at

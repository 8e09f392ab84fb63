"""schemas.serde_events_per_s: our serde vs confluent-kafka's stock Avro path, same records."""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import replace
from decimal import Decimal
from typing import Any

from bench.harness import Context, Result

N_EVENTS = 20_000
# Passes of each codec, interleaved; the best is reported. On this shared 2-core VM one run's passes
# of the same code differed by up to 1.5x (2026-12-08: ours 32.2-49.5 k), so 5 rather than 3.
PASSES = 5
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "42",
    "models",
    "answer",
    "17",
    "prompts",
]


def _records(n: int = N_EVENTS) -> list[dict]:
    from schemas import events as ev

    rng = random.Random(7)
    out = []
    for i in range(n):
        completion = " ".join(rng.choice(WORDS) for _ in range(rng.randint(180, 360)))  # ~1-2 KiB
        out.append(
            ev.InferenceCompleted(
                producer="gateway@bench",
                request_id=str(uuid.UUID(int=rng.getrandbits(128))),
                model="smollm2-135m",
                version=f"v{i % 3}",
                adapter=f"v{i % 3}",
                status=ev.CompletionStatus.ok,
                completion=completion,
                finish_reason="stop",
                latency_ms=rng.uniform(50, 900),
                ttft_ms=rng.uniform(5, 80),
                prompt_tokens=rng.randint(20, 400),
                completion_tokens=rng.randint(40, 400),
                tokens_per_s=rng.uniform(20, 60),
                cost=Decimal(rng.randint(1, 10**6)) / Decimal(10**9),
                engine_seconds=rng.uniform(0.05, 1.0),
                user_id=f"u{i % 97}",
            ).to_avro()
        )
    return out


def _plain(schema: Any) -> Any:
    """``schema`` with every ``logicalType`` annotation removed (the bare Avro types)."""
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


def serde_events(ctx: Context) -> list[Result]:
    import io
    import json

    import cavro
    import fastavro
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from infra import registry
    from infra.registry import load_schema
    from infra.serde import TopicSerde
    from schemas.topics import COMPLETED

    reg = registry.client(ctx.stack["registry"])
    topic = replace(COMPLETED, name=f"bench-completed-{uuid.uuid4().hex[:6]}")
    registry.register(reg, topic)
    records = _records()
    size = sum(len(r["completion"]) for r in records) / len(records)

    ours = TopicSerde(reg, topic)
    sctx = SerializationContext(topic.name, MessageField.VALUE)
    schema_str = topic.schema_path.read_text()
    stock_ser = AvroSerializer(
        reg, schema_str, conf={"auto.register.schemas": False, "use.latest.version": True}
    )
    stock_de = AvroDeserializer(reg, schema_str)

    # fastavro alone, the least work a fastavro-based codec can do for these records: its
    # schemaless writer and reader with the bare schema (no logical types), on the same records with
    # their logical types already converted outside the clock, and no framing or registry.
    logical = fastavro.parse_schema(load_schema(topic.schema_path))
    bare = fastavro.parse_schema(_plain(load_schema(topic.schema_path)))
    bare_records = []
    for r in records:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, logical, r)
        buf.seek(0)
        bare_records.append(fastavro.schemaless_reader(buf, bare, None))

    def run_fastavro() -> float:
        t0 = time.perf_counter()
        for r in bare_records:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, bare, r)
            buf.seek(0)
            fastavro.schemaless_reader(buf, bare, None)
        return N_EVENTS / (time.perf_counter() - t0)

    # cavro alone, the codec under our hot path, the same way: bare schema, pre-converted records.
    bare_cavro = cavro.Schema(
        json.dumps(_plain(load_schema(topic.schema_path))),
        options=cavro.DEFAULT_OPTIONS.replace(record_decodes_to_dict=True),
    )
    assert bare_cavro.binary_decode(bare_cavro.binary_encode(bare_records[0])) == bare_records[0]

    def run_cavro() -> float:
        t0 = time.perf_counter()
        for r in bare_records:
            bare_cavro.binary_decode(bare_cavro.binary_encode(r))
        return N_EVENTS / (time.perf_counter() - t0)

    def run_ours() -> float:
        t0 = time.perf_counter()
        for r in records:
            ours.decode(ours.encode(r))
        return N_EVENTS / (time.perf_counter() - t0)

    def run_stock() -> float:
        t0 = time.perf_counter()
        for r in records:
            stock_de(stock_ser(r, sctx), sctx)
        return N_EVENTS / (time.perf_counter() - t0)

    # same bytes both ways, checked before timing
    assert stock_de(ours.encode(records[0]), sctx) == ours.decode(stock_ser(records[0], sctx))
    run_ours(), run_fastavro(), run_cavro(), run_stock()  # warm caches (schema ids, parsed schemas)
    rounds = [(run_ours(), run_fastavro(), run_cavro(), run_stock()) for _ in range(PASSES)]  # interleaved
    o, f, c, s = (max(col) for col in zip(*rounds, strict=True))
    passes = "; ".join(
        f"ours {a:,.0f}, fastavro alone {b:,.0f}, cavro alone {x:,.0f}, stock {y:,.0f}"
        for a, b, x, y in rounds
    )
    why = (
        f"the 50,000/s part: cavro alone, the codec under our hot path with no framing, no registry and no "
        f"logical-type conversion, did at most {c:,.0f} events/s in the same passes, so no codec built on "
        "it meets the goal on this machine"
        if o < 50_000 and c < 50_000
        else None
    )
    bare_method = (
        "the same records, with the schema's logicalType annotations removed and the records' UUID, "
        "datetime and Decimal values converted to plain str, int and bytes before the clock starts; no "
        "framing, no registry, no conversions. Measured in the same passes as schemas.serde_events_per_s, "
        f"interleaved; best of {PASSES}."
    )
    return [
        Result(
            name="schemas.serde_events_per_s",
            why_not_met=why,
            value=o,
            unit="events/s",
            peer="confluent-kafka AvroSerializer+AvroDeserializer",
            peer_value=s,
            goal="≥ 50,000/s on one core and ≥ 1.0× stock",
            goal_ratio=1.0,
            goal_value=50_000,
            method=(
                f"encode+decode of {N_EVENTS:,} InferenceCompleted records as dicts (completion text "
                f"{size:.0f} chars on average, UUID, timestamp-millis and decimal logical types) in one "
                "thread against the real registry (ids cached after the first call); TopicSerde writes and "
                f"reads with cavro, logical types converted by fastavro's converters; {PASSES} passes each, "
                "interleaved with the three others after one unmeasured pass of each, the best reported. "
                f"Events/s of each pass: {passes}."
            ),
        ),
        Result(
            name="schemas.serde_events_per_s.fastavro_alone",
            value=f,
            unit="events/s",
            peer="confluent-kafka AvroSerializer+AvroDeserializer",
            peer_value=s,
            goal="report (fastavro, the codec our serde used before cavro)",
            method="fastavro's schemaless_writer then schemaless_reader, one BytesIO each, of " + bare_method,
        ),
        Result(
            name="schemas.serde_events_per_s.cavro_alone",
            value=c,
            unit="events/s",
            peer="confluent-kafka AvroSerializer+AvroDeserializer",
            peer_value=s,
            goal="report (the codec under our hot path: the most a serde built on it can do)",
            method="cavro's Schema.binary_encode then binary_decode (records read as dicts) of "
            + bare_method,
        ),
    ]

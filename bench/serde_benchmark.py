"""schemas.serde_events_per_s: our serde vs confluent-kafka's stock Avro path, same records."""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import replace
from decimal import Decimal

from bench.harness import Context, Result

N_EVENTS = 20_000
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


def _records() -> list[dict]:
    from schemas import events as ev

    rng = random.Random(7)
    out = []
    for i in range(N_EVENTS):
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


def serde_events(ctx: Context) -> list[Result]:
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from infra import registry
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
    run_ours(), run_stock()  # warm caches (schema ids, parsed schemas)
    o = max(run_ours() for _ in range(3))
    s = max(run_stock() for _ in range(3))
    return [
        Result(
            name="schemas.serde_events_per_s",
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
                "thread against the real registry (ids cached after the first call); best of 3 passes."
            ),
        )
    ]

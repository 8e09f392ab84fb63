"""Poison messages go to <topic>.dlq with their bytes and headers; replay brings them back."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from infra import dlq, registry
from infra.kafka import consumer, ensure_topics, produce, producing
from schemas import events as ev
from schemas.topics import COMPLETED


@pytest.mark.reliability
def test_poison_messages_dead_lettered_and_replayed(stack, unique, event_topic) -> None:
    topic, serde = event_topic(COMPLETED)
    good = ev.InferenceCompleted(
        producer="t",
        request_id="r",
        model="m",
        status=ev.CompletionStatus.ok,
        latency_ms=1.0,
        cost=Decimal(0),
    )
    valid = serde.encode_event(good)
    poison = {
        b"garbage": b"\xde\xad\xbe\xef" * 4,
        b"wrong-magic": b"\x01" + valid[1:],
        b"unknown-id": b"\x00\x00\x0f\x42\x3f" + valid[5:],
        b"truncated": valid[: len(valid) // 2],
        b"empty": b"",
    }
    with producing(stack.kafka) as p:
        produce(p, topic.name, b"ok-1", valid)
        for key, value in poison.items():
            produce(p, topic.name, key, value, headers=[("origin", b"test")])
        produce(p, topic.name, b"ok-2", valid)

    decoded, c = [], consumer(stack.kafka, f"g-{unique}")
    c.subscribe([topic.name])
    with producing(stack.kafka) as p:
        deadline = time.monotonic() + 30
        seen = 0
        while seen < 7 and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            seen += 1
            event = dlq.decode_or_dead_letter(serde, msg, p, "test-consumer")
            if event is not None:
                decoded.append(event)
            c.commit(message=msg, asynchronous=False)
    c.close()
    assert decoded == [good, good]

    letters = dlq.read_all(stack.kafka, topic.name)
    assert {d.key for d in letters} == set(poison)
    by_key = {d.key: d for d in letters}
    for key, value in poison.items():
        d = by_key[key]
        assert d.value == value  # original bytes, untouched
        assert d.headers["dlq.source.topic"] == topic.name
        assert d.headers["dlq.consumer"] == "test-consumer"
        assert d.headers["origin"] == "test"  # original headers kept
        assert int(d.headers["dlq.source.offset"]) >= 0
    assert by_key[b"garbage"].headers["dlq.error.class"] == "NotFramed"
    assert by_key[b"wrong-magic"].headers["dlq.error.class"] == "NotFramed"
    assert by_key[b"unknown-id"].headers["dlq.error.class"] == "UnknownSchemaId"
    assert by_key[b"truncated"].headers["dlq.error.class"] == "CorruptBody"

    # Replay: only what decodes now goes back; the rest stays dead-lettered.
    def decodable(v: bytes) -> bool:
        try:
            serde.decode_event(v)
            return True
        except Exception:
            return False

    with producing(stack.kafka) as p:
        assert dlq.replay(stack.kafka, topic.name, p, accept=decodable) == (0, 5)
        # a "fixed" letter: pretend an operator accepts everything now
        assert dlq.replay(stack.kafka, topic.name, p, accept=lambda v: v == b"") == (1, 4)
        assert dlq.replay(stack.kafka, topic.name, p, accept=lambda v: False) == (0, 4)


def test_dlq_cli_show_and_replay(stack, unique) -> None:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from infra.dlq import send_to_dlq

    ensure_topics(stack.kafka, only=[COMPLETED])
    registry.register(registry.client(stack.registry), COMPLETED)
    with producing(stack.kafka) as p:
        produce(p, COMPLETED.name, f"bad-{unique}", b"not avro at all")
    c = consumer(stack.kafka, f"g-{unique}")
    c.subscribe([COMPLETED.name])
    deadline = time.monotonic() + 30
    with producing(stack.kafka) as p:
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and not msg.error() and msg.key() == f"bad-{unique}".encode():
                send_to_dlq(p, msg, ValueError("not avro"), "cli-test")
                break
    c.close()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, **stack.env()},
            capture_output=True,
            text=True,
            timeout=120,
        )

    show = cli("dlq", "show", COMPLETED.name, "--json")
    assert show.returncode == 0, show.stderr
    letters = [d for d in json.loads(show.stdout) if d["key"] == f"bad-{unique}"]
    assert len(letters) == 1 and letters[0]["error"] == "ValueError: not avro"
    assert letters[0]["source"].startswith(f"{COMPLETED.name}[")
    rep = cli("dlq", "replay", COMPLETED.name)
    assert rep.returncode == 0, rep.stderr
    assert "replayed 0 dead letter(s)" in rep.stdout and "still undecodable" in rep.stdout

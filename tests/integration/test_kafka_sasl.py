"""rftloop's Kafka clients against a broker that requires SASL/PLAIN (`RFTLOOP_LOCAL_KAFKA_SASL_PASSWORD`):
the right credentials work end to end, wrong or missing ones fail with the broker's reason, and the
password is in no log, repr or settings dump."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from pydantic import SecretStr

from infra.kafka import consumer, ensure_topics, producer, producing
from infra.local import services
from infra.local.process import ManagedProcess, free_port
from infra.settings import KafkaSettings, LocalStackSettings
from schemas.topics import COMPLETED

pytestmark = pytest.mark.reliability

PASSWORD = "s3cret-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def sasl_broker(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalStackSettings, ManagedProcess]]:
    local = LocalStackSettings(
        state_dir=tmp_path_factory.mktemp("sasl"),
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        kafka_sasl_password=SecretStr(PASSWORD),
    )
    kafka = services.kafka(local)
    kafka.start()
    try:
        yield local, kafka
    finally:
        kafka.stop()


def _settings(
    local: LocalStackSettings, password: str | None, protocol: str = "SASL_PLAINTEXT"
) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=f"127.0.0.1:{local.kafka_port}",
        security_protocol=protocol,
        sasl_mechanism="PLAIN" if password is not None else None,
        sasl_username="rftloop" if password is not None else None,
        sasl_password=SecretStr(password) if password is not None else None,
    )


def test_right_credentials_create_topics_and_round_trip_records(
    sasl_broker: tuple[LocalStackSettings, ManagedProcess],
) -> None:
    local, _ = sasl_broker
    kafka = _settings(local, PASSWORD)
    topic = replace(COMPLETED, name=f"sasl-{uuid.uuid4().hex[:8]}")
    assert {r.action for r in ensure_topics(kafka, only=[topic])} == {"created"}
    with producing(kafka) as p:
        for i in range(100):
            p.produce(topic.name, f"v{i}".encode(), key=f"k{i}")
    c = consumer(kafka, f"sasl-{uuid.uuid4().hex[:6]}")
    c.subscribe([topic.name])
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < 100 and time.monotonic() < deadline:
        msg = c.poll(0.5)
        if msg is not None and not msg.error():
            got.append(msg.value())
    c.close()
    assert sorted(got) == sorted(f"v{i}".encode() for i in range(100))


@pytest.mark.parametrize(("password", "protocol"), [("wrong", "SASL_PLAINTEXT"), (None, "PLAINTEXT")])
def test_wrong_or_missing_credentials_fail_with_the_brokers_reason(
    sasl_broker: tuple[LocalStackSettings, ManagedProcess], password: str | None, protocol: str
) -> None:
    local, _ = sasl_broker
    kafka = _settings(local, password, protocol)
    reason = services.kafka_probe(kafka.bootstrap_servers, security=kafka.client_config())
    assert reason is not None  # what `rftloop status` / a start-up check reports
    if password is not None:
        assert "Authentication failed" in reason or "SASL" in reason, reason
    p = producer(kafka, **{"delivery.timeout.ms": 5000})
    p.produce("anything", b"x")
    deadline = time.monotonic() + 15
    while not p.stalled() and time.monotonic() < deadline:
        p.poll(0.2)
    assert p.stalled(), "the producer did not report the refused connection"
    assert p.broker_error is not None
    if password is not None:
        assert "Authentication failed" in p.broker_error or "SASL" in p.broker_error, p.broker_error
    p.flush(10)
    assert p.failed == 1 and p.delivered == 0  # counted, not silently dropped
    with pytest.raises(KafkaException):
        ensure_topics(kafka, only=[replace(COMPLETED, name="never")])


def test_the_password_is_in_no_repr_dump_or_log(
    sasl_broker: tuple[LocalStackSettings, ManagedProcess],
) -> None:
    local, kafka_proc = sasl_broker
    kafka = _settings(local, PASSWORD)
    for text in (repr(kafka), str(kafka), kafka.model_dump_json(), repr(local), local.model_dump_json()):
        assert PASSWORD not in text
    assert PASSWORD not in kafka_proc.log_file.read_text(errors="replace")
    props = Path(local.state_dir).resolve() / "kafka" / "server.properties"
    assert props.stat().st_mode & 0o077 == 0, "server.properties (holds the JAAS line) must be 0600"

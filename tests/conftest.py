"""Shared fixtures. Tests get a marker from their folder (unit / integration / e2e).

The integration stack (Kafka, Apicurio, embedded ClickHouse) is started once per
test session on free ports, in a temp state dir, with the same code as
`rftloop up`, and stopped at the end. Each test gets fresh uuid topics, consumer
groups and databases from factory fixtures.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infra.local.process import free_port, port_in_use
from infra.settings import ClickHouseSettings, KafkaSettings, LocalStackSettings, RegistrySettings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for marker in ("unit", "integration", "e2e"):
            if marker in parts:
                item.add_marker(getattr(pytest.mark, marker))


@dataclass(frozen=True)
class Stack:
    local: LocalStackSettings
    kafka: KafkaSettings
    registry: RegistrySettings
    clickhouse: ClickHouseSettings

    def env(self) -> dict[str, str]:
        """RFTLOOP_* variables that point a subprocess (CLI, worker) at this stack."""
        return {
            "RFTLOOP_LOCAL_STATE_DIR": str(self.local.state_dir),
            "RFTLOOP_LOCAL_KAFKA_PORT": str(self.local.kafka_port),
            "RFTLOOP_LOCAL_KAFKA_CONTROLLER_PORT": str(self.local.kafka_controller_port),
            "RFTLOOP_LOCAL_REGISTRY_PORT": str(self.local.registry_port),
            "RFTLOOP_LOCAL_CLICKHOUSE_PORT": str(self.local.clickhouse_port),
            "RFTLOOP_LOCAL_KAFKA_BROKERS": str(self.local.kafka_brokers or 1),
            "RFTLOOP_KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "RFTLOOP_KAFKA_REPLICATION_FACTOR": str(self.kafka.replication_factor),
            **(
                {"RFTLOOP_KAFKA_MIN_INSYNC_REPLICAS": str(self.kafka.min_insync_replicas)}
                if self.kafka.min_insync_replicas
                else {}
            ),
            "RFTLOOP_REGISTRY_URL": self.registry.url,
            "RFTLOOP_CLICKHOUSE_URL": self.clickhouse.url,
        }


def _free_port_block(n: int) -> int:
    """The first of ``n`` consecutive free ports (a Kafka cluster's brokers and controllers)."""
    for _ in range(100):
        base = free_port()
        if base + n < 65535 and not any(port_in_use(base + i) for i in range(n)):
            return base
    raise RuntimeError(f"no {n} consecutive free ports found")


def make_local_settings(state_dir: Path, brokers: int = 1) -> LocalStackSettings:
    base = _free_port_block(2 * brokers) if brokers > 1 else None
    return LocalStackSettings(
        state_dir=state_dir,
        kafka_port=free_port() if base is None else base,
        kafka_controller_port=free_port() if base is None else base + 1,
        kafka_brokers=brokers,
        registry_port=free_port(),
        clickhouse_port=free_port(),
    )


@contextmanager
def running_stack(state_dir: Path, brokers: int = 1) -> Iterator[Stack]:
    """Kafka (``brokers`` nodes), Apicurio and the embedded ClickHouse on free ports under
    `state_dir`; stopped on exit. A cluster's topics get replication factor 3, min.insync 2."""
    from infra.local import stack as local_stack
    from infra.local.services import bootstrap_servers, replication

    local = make_local_settings(state_dir, brokers)
    try:
        local_stack.up(local, say=lambda m: None)
    except BaseException:  # one service failed to start: stop the ones that did, or they outlive the run
        local_stack.down(local, say=lambda m: None)
        raise
    rf, isr = replication(brokers)
    s = Stack(
        local=local,
        kafka=KafkaSettings(
            bootstrap_servers=bootstrap_servers(local),
            partitions=3,
            replication_factor=rf,
            min_insync_replicas=isr if brokers > 1 else None,
        ),
        registry=RegistrySettings(url=f"http://127.0.0.1:{local.registry_port}/apis/ccompat/v7"),
        clickhouse=ClickHouseSettings(url=f"http://127.0.0.1:{local.clickhouse_port}"),
    )
    try:
        yield s
    finally:
        if not os.environ.get("RFTLOOP_TEST_KEEP_STACK"):
            # a test stack's data is thrown away: a node still shutting down after 10 s is killed
            local_stack.down(local, say=lambda m: None, timeout_s=10)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def new_topic(stack: Stack) -> Iterator[object]:
    """Factory: new_topic(partitions=3) -> a fresh topic name."""
    from confluent_kafka.admin import NewTopic

    from infra.kafka import admin, wait_visible

    created: list[str] = []
    client = admin(stack.kafka)  # keep a reference: a collected client cancels its futures

    def make(partitions: int = 3, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        client.create_topics([NewTopic(name, partitions, 1)])[name].result()
        wait_visible(client, [name])
        created.append(name)
        return name

    yield make
    if created:
        for fut in client.delete_topics(created).values():
            fut.result()


@pytest.fixture
def ch_database(stack: Stack, unique: str) -> Iterator[str]:
    from infra.clickhouse.client import connect

    name = f"test_{unique}"
    c = connect(stack.clickhouse, database="default")
    c.command(f"CREATE DATABASE {name}")
    yield name
    c.command(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def event_topic(stack: Stack, unique: str) -> object:
    """Factory: event_topic(COMPLETED) -> (a fresh copy of that topic, created and registered; its serde)."""
    from dataclasses import replace

    from infra import registry
    from infra.kafka import ensure_topics
    from infra.serde import TopicSerde

    reg = registry.client(stack.registry)

    def make(spec):  # type: ignore[no-untyped-def]
        topic = replace(spec, name=f"{spec.name}-{unique}")
        ensure_topics(stack.kafka, only=[topic])
        registry.register(reg, topic)
        return topic, TopicSerde(reg, topic)

    return make


@pytest.fixture
def record_figures(request: pytest.FixtureRequest) -> Any:
    """record_figures(scenario, **figures): print them, and with RFTLOOP_RELIABILITY_OUT set append
    them as a JSON line (`make reliability` renders RELIABILITY.md's table from that file)."""

    def record(scenario: str, **figures: Any) -> None:
        line = {"scenario": scenario, "test": request.node.nodeid, **figures}
        print(f"figures: {json.dumps(line)}")
        out = os.environ.get("RFTLOOP_RELIABILITY_OUT")
        if out:
            with open(out, "a") as f:
                f.write(json.dumps(line) + "\n")

    return record

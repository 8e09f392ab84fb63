"""The local stack's services: Kafka (KRaft), Apicurio Registry, embedded ClickHouse."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.local.artifacts import apicurio_home, find_java, kafka_lib
from infra.local.process import ManagedProcess, ServiceError, free_port, port_in_use
from infra.settings import LocalStackSettings

_LOG4J2 = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""


def _http_probe(url: str, expect: bytes | None = None) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            body = resp.read()
    except OSError as exc:
        return str(getattr(exc, "reason", exc))
    if expect is not None and not body.startswith(expect):
        return f"unexpected answer {body[:60]!r}"
    return None


def kafka_probe(
    bootstrap: str, node_id: int | None = None, security: dict[str, str] | None = None
) -> str | None:
    from confluent_kafka.admin import AdminClient

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if not port_in_use(int(port), host):
        return "connection refused"
    errors: list[str] = []  # the client's own errors say why (e.g. "SASL authentication error: ...")
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "log_level": 0,
        "error_cb": lambda e: errors.append(str(e)),
        **(security or {}),
    }
    try:
        admin = AdminClient(conf)
    except Exception as exc:  # a bad client setting
        return str(exc)
    try:
        md = admin.list_topics(timeout=2)
    except Exception as exc:  # KafkaException while the broker is not up yet
        admin.poll(0.1)  # serves error_cb
        return errors[-1] if errors else str(exc)
    if not md.brokers:
        return "no broker in metadata"
    if node_id is not None and node_id not in md.brokers:
        return f"node {node_id} not registered with the controllers yet"
    return None


@dataclass(frozen=True)
class KafkaNode:
    """One KRaft node of the local Kafka: a broker that is also a controller."""

    node_id: int
    port: int
    controller_port: int
    name: str  # "kafka" for a one-node stack (as before clusters), else "kafka-<id>"


def kafka_nodes(settings: LocalStackSettings) -> list[KafkaNode]:
    """The local Kafka's nodes: as many as ``kafka_brokers`` asks, else as the state dir was created."""
    n = kafka_brokers(settings)
    if n == 1:
        return [KafkaNode(1, settings.kafka_port, settings.kafka_controller_port, "kafka")]
    nodes = [
        KafkaNode(
            i + 1, settings.kafka_port + 2 * i, settings.kafka_controller_port + 2 * i, f"kafka-{i + 1}"
        )
        for i in range(n)
    ]
    ports = [p for node in nodes for p in (node.port, node.controller_port)]
    if len(set(ports)) != len(ports):
        raise ServiceError(
            f"{n} brokers from RFTLOOP_LOCAL_KAFKA_PORT={settings.kafka_port} and "
            f"RFTLOOP_LOCAL_KAFKA_CONTROLLER_PORT={settings.kafka_controller_port} (each + 2 per broker) "
            "would share ports; pick ports an odd number apart (e.g. 9092 and 9093)"
        )
    return nodes


def bootstrap_servers(settings: LocalStackSettings) -> str:
    return ",".join(f"127.0.0.1:{n.port}" for n in kafka_nodes(settings))


def _cluster_file(settings: LocalStackSettings) -> Path:
    return settings.state_dir.resolve() / "kafka" / "cluster.json"


def kafka_brokers(settings: LocalStackSettings) -> int:
    """How many brokers: the setting, checked against what the state dir was formatted for."""
    recorded = None
    with contextlib.suppress(OSError, ValueError, KeyError):
        recorded = int(json.loads(_cluster_file(settings).read_text())["brokers"])
    if recorded is None:
        single = (settings.state_dir.resolve() / "data" / "kafka" / "meta.properties").exists()
        recorded = 1 if single else None
    wanted = settings.kafka_brokers
    if wanted is not None and recorded is not None and wanted != recorded:
        raise ServiceError(
            f"the state dir {settings.state_dir} holds a {recorded}-broker Kafka, not {wanted}: "
            "`rftloop down`, then remove its data/kafka* folders (topics are lost) or choose "
            "another RFTLOOP_LOCAL_STATE_DIR"
        )
    return wanted or recorded or 1


def replication(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a cluster of ``brokers``: 3 and 2 from three
    brokers up, so acks=all writes go on with one broker down and are on two disks."""
    rf = min(3, brokers)
    return rf, max(1, rf - 1)


def _kafka_properties(settings: LocalStackSettings, node: KafkaNode, data: Path) -> str:
    nodes = kafka_nodes(settings)
    rf, isr = replication(len(nodes))
    if len(nodes) == 1:  # dynamic quorum of one, formatted --standalone
        quorum = f"controller.quorum.bootstrap.servers=127.0.0.1:{node.controller_port}"
    else:  # a static quorum: every node a voter
        quorum = "controller.quorum.voters=" + ",".join(
            f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes
        )
    client = "SASL_PLAINTEXT" if settings.kafka_sasl_password is not None else "PLAINTEXT"
    return "\n".join(
        [
            "process.roles=broker,controller",
            f"node.id={node.node_id}",
            f"listeners={client}://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            f"advertised.listeners={client}://127.0.0.1:{node.port}",
            "controller.listener.names=CONTROLLER",
            f"listener.security.protocol.map=CONTROLLER:PLAINTEXT,{client}:{client}",
            quorum,
            *_sasl_properties(settings),
            f"log.dirs={data}",
            "num.partitions=3",
            # topics are created by `rftloop topics ensure` with their own settings
            "auto.create.topics.enable=false",
            f"default.replication.factor={rf}",
            f"min.insync.replicas={isr}",
            f"offsets.topic.replication.factor={rf}",
            "offsets.topic.num.partitions=10",
            f"transaction.state.log.replication.factor={rf}",
            f"transaction.state.log.min.isr={isr}",
            f"share.coordinator.state.topic.replication.factor={rf}",
            f"share.coordinator.state.topic.min.isr={isr}",
            "group.initial.rebalance.delay.ms=0",
            "",
        ]
    )


def _sasl_properties(settings: LocalStackSettings) -> list[str]:
    """SASL/PLAIN on the client (and inter-broker) listener; one user. The controllers stay on
    loopback PLAINTEXT. The password lands in server.properties, which is written 0600."""
    if settings.kafka_sasl_password is None:
        return []
    user, password = settings.kafka_sasl_username, settings.kafka_sasl_password.get_secret_value()
    return [
        "sasl.enabled.mechanisms=PLAIN",
        "sasl.mechanism.inter.broker.protocol=PLAIN",
        "inter.broker.listener.name=SASL_PLAINTEXT",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config="
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{user}" password="{password}" user_{user}="{password}";',
    ]


def _cluster_id(settings: LocalStackSettings, tool: list[str], brokers: int) -> str:
    """One id for every node of the cluster, kept beside the config (so a node re-formatted later
    joins the same cluster)."""
    path = _cluster_file(settings)
    with contextlib.suppress(OSError, ValueError, KeyError):
        return str(json.loads(path.read_text())["cluster_id"])
    cluster_id = subprocess.run(
        [*tool, "random-uuid"], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cluster_id": cluster_id, "brokers": brokers}))
    return cluster_id


def kafka(settings: LocalStackSettings, node_id: int = 1) -> ManagedProcess:
    """The process of one Kafka node (the only one unless ``kafka_brokers`` > 1)."""
    nodes = kafka_nodes(settings)
    node = nodes[node_id - 1]
    state = settings.state_dir.resolve()
    conf_dir, data = state / node.name, state / "data" / node.name
    bootstrap = f"127.0.0.1:{node.port}"

    def prepare() -> list[str]:
        java = settings.require_tool("java")
        cp = f"{kafka_lib(settings)}/*"
        conf_dir.mkdir(parents=True, exist_ok=True)
        props = conf_dir / "server.properties"
        props.touch(mode=0o600)
        props.chmod(0o600)  # may hold the SASL password
        props.write_text(_kafka_properties(settings, node, data))
        (conf_dir / "log4j2.properties").write_text(_LOG4J2)
        if not (data / "meta.properties").exists():
            data.mkdir(parents=True, exist_ok=True)
            tool = [java, "-cp", cp, "kafka.tools.StorageTool"]
            cluster_id = _cluster_id(settings, tool, len(nodes))
            standalone = ["--standalone"] if len(nodes) == 1 else []
            fmt = subprocess.run(
                [*tool, "format", *standalone, "-t", cluster_id, "-c", str(props)],
                capture_output=True,
                text=True,
            )
            if fmt.returncode != 0:
                raise ServiceError(f"kafka storage format failed: {fmt.stdout}{fmt.stderr}")
        return [
            java,
            f"-Xmx{settings.kafka_heap}",
            f"-Xms{settings.kafka_heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={conf_dir / 'log4j2.properties'}",
            "-cp",
            cp,
            "kafka.Kafka",
            str(props),
        ]

    return ManagedProcess(
        name=node.name,
        prepare=prepare,
        state_dir=state,
        port=node.port,
        port_setting="RFTLOOP_LOCAL_KAFKA_PORT",
        probe=lambda: kafka_probe(bootstrap, node.node_id, settings.kafka_client_security()),
    )


def registry(settings: LocalStackSettings) -> ManagedProcess:
    state = settings.state_dir.resolve()
    port = settings.registry_port
    db = state / "data" / "registry" / "registry"

    def prepare() -> list[str]:
        home = apicurio_home(settings)
        java = find_java(settings, 21, "RFTLOOP_LOCAL_REGISTRY_JAVA", settings.registry_java)
        db.parent.mkdir(parents=True, exist_ok=True)
        return [
            java,
            f"-Xmx{settings.registry_heap}",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            f"-Dquarkus.http.port={port}",
            "-Dquarkus.http.host=127.0.0.1",
            # Quarkus also opens a management port (health, metrics; 9000 by default): a free one
            # on loopback, so several stacks (tests, benchmarks, a dev stack) coexist.
            f"-Dquarkus.management.port={free_port()}",
            "-Dquarkus.management.host=127.0.0.1",
            # Schemas survive `rftloop down`/`up`, so ids framed into Kafka records stay valid.
            # WRITE_DELAY=0: a registered schema is on disk when the call returns, so a kill -9 right
            # after registering cannot orphan ids already framed into Kafka records (seen in a test).
            f"-Dapicurio.datasource.url=jdbc:h2:file:{db};DB_CLOSE_ON_EXIT=FALSE;WRITE_DELAY=0",
            f"-Dapicurio.storage.snapshot.location={db.parent}",
            "-Dquarkus.log.console.level=WARN",
            "-jar",
            str(home / "quarkus-run.jar"),
        ]

    return ManagedProcess(
        name="registry",
        prepare=prepare,
        cwd=None,
        state_dir=state,
        port=port,
        port_setting="RFTLOOP_LOCAL_REGISTRY_PORT",
        probe=lambda: _http_probe(f"http://127.0.0.1:{port}/apis/ccompat/v7/subjects"),
        start_timeout_s=180,
    )


def clickhouse(settings: LocalStackSettings) -> ManagedProcess:
    state = settings.state_dir.resolve()
    port = settings.clickhouse_port
    root = Path(__file__).resolve().parents[2]
    return ManagedProcess(
        name="clickhouse",
        prepare=lambda: [
            sys.executable,
            "-m",
            "infra.clickhouse.embedded_server",
            "--path",
            str(state / "data" / "clickhouse"),
            "--port",
            str(port),
        ],
        cwd=root,
        state_dir=state,
        port=port,
        port_setting="RFTLOOP_LOCAL_CLICKHOUSE_PORT",
        probe=lambda: _http_probe(f"http://127.0.0.1:{port}/ping", b"Ok."),
        notes=lambda: _detached_note(state / "data" / "clickhouse"),
    )


def _detached_note(path: Path) -> str | None:
    """The tables the embedded ClickHouse detached at startup because they failed to load."""
    from infra.clickhouse.embedded_engine import detached_tables

    entries = detached_tables(str(path))
    if not entries:
        return None
    listed = "; ".join(f"{e['table']} ({e['reason'][:120]})" for e in entries)
    return f"DETACHED {len(entries)} table(s) that failed to load: {listed}; fix, then ATTACH TABLE"


def all_services(settings: LocalStackSettings) -> list[ManagedProcess]:
    """In start order (stop in reverse)."""
    return [
        *(kafka(settings, n.node_id) for n in kafka_nodes(settings)),
        registry(settings),
        clickhouse(settings),
    ]

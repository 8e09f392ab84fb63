"""The local stack's services: Kafka (KRaft), Apicurio Registry, embedded ClickHouse."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

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


def kafka_probe(bootstrap: str) -> str | None:
    from confluent_kafka.admin import AdminClient

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if not port_in_use(int(port), host):
        return "connection refused"
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        md = admin.list_topics(timeout=2)
    except Exception as exc:  # KafkaException while the broker is not up yet
        return str(exc)
    return None if md.brokers else "no broker in metadata"


def _kafka_properties(settings: LocalStackSettings, data: Path) -> str:
    port, cport = settings.kafka_port, settings.kafka_controller_port
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{cport}",
            f"log.dirs={data}",
            "num.partitions=3",
            # topics are created by `rftloop topics ensure` with their own settings
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=10",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "",
        ]
    )


def kafka(settings: LocalStackSettings) -> ManagedProcess:
    state = settings.state_dir.resolve()
    conf_dir, data = state / "kafka", state / "data" / "kafka"
    bootstrap = f"127.0.0.1:{settings.kafka_port}"

    def prepare() -> list[str]:
        java = settings.require_tool("java")
        cp = f"{kafka_lib(settings)}/*"
        conf_dir.mkdir(parents=True, exist_ok=True)
        props = conf_dir / "server.properties"
        props.write_text(_kafka_properties(settings, data))
        (conf_dir / "log4j2.properties").write_text(_LOG4J2)
        if not (data / "meta.properties").exists():
            data.mkdir(parents=True, exist_ok=True)
            tool = [java, "-cp", cp, "kafka.tools.StorageTool"]
            cluster_id = subprocess.run(
                [*tool, "random-uuid"], capture_output=True, text=True, check=True
            ).stdout.split()[-1]
            fmt = subprocess.run(
                [*tool, "format", "--standalone", "-t", cluster_id, "-c", str(props)],
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
        name="kafka",
        prepare=prepare,
        state_dir=state,
        port=settings.kafka_port,
        port_setting="RFTLOOP_LOCAL_KAFKA_PORT",
        probe=lambda: kafka_probe(bootstrap),
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
    )


def all_services(settings: LocalStackSettings) -> list[ManagedProcess]:
    """In start order (stop in reverse)."""
    return [kafka(settings), registry(settings), clickhouse(settings)]

"""docker-compose.yml stays consistent with the settings (and parses with docker compose where present)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from infra.settings import (
    ClickHouseSettings,
    GatewaySettings,
    JudgeSettings,
    KafkaSettings,
    LocalStackSettings,
    RegistrySettings,
    StreamsSettings,
    TrainerSettings,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def _known_variables() -> set[str]:
    out = set()
    for cls in (
        KafkaSettings,
        RegistrySettings,
        ClickHouseSettings,
        LocalStackSettings,
        StreamsSettings,
        GatewaySettings,
        TrainerSettings,
        JudgeSettings,
    ):
        prefix = cls.model_config["env_prefix"]
        out |= {f"{prefix}{name}".upper() for name in cls.model_fields}
    return out


def test_services_and_settings_names() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert {
        "kafka",
        "registry",
        "clickhouse",
        "init",
        "sink",
        "streams",
        "judge",
        "trainer",
        "gateway",
        "dashboard",
    } <= set(services)
    for name in ("kafka", "registry", "clickhouse"):
        assert "healthcheck" in services[name], name
    used = {k for s in services.values() for k in (s.get("environment") or {}) if k.startswith("RFTLOOP_")}
    from cli.main import build_parser

    for name in ("sink", "streams", "judge", "trainer", "gateway", "dashboard"):
        command = services[name]["command"]
        assert command[:2] == ["rftloop", name], name
        build_parser().parse_args(command[1:])  # a real CLI command with valid arguments
    assert used, "the app services must be configured through RFTLOOP_* settings"
    assert used <= _known_variables(), used - _known_variables()
    assert services["kafka"]["image"].endswith(LocalStackSettings().kafka_version)
    assert services["registry"]["image"].endswith(LocalStackSettings().apicurio_version)


def test_docker_compose_config_parses_where_available() -> None:
    if (
        not shutil.which("docker")
        or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0
    ):
        import pytest

        pytest.skip("docker compose plugin not installed on this machine (no Docker engine here)")
    r = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def _interpolate(value: object, env: dict[str, str]) -> str:
    """Compose's ${VAR:-default} substitution (the only form docker-compose.yml uses)."""
    import re

    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m[1]) or m[2], str(value))


def test_cluster_profile_is_a_three_node_quorum_matching_rftloop_up() -> None:
    from infra.local.services import replication

    doc = yaml.safe_load(COMPOSE.read_text())
    env_file = ROOT / "infra" / "compose" / "cluster.env"
    env = dict(
        line.split("=", 1)
        for line in env_file.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    nodes = {name: doc["services"][name] for name in ("kafka", "kafka-2", "kafka-3")}
    assert all(s.get("profiles") == ["cluster"] for n, s in nodes.items() if n != "kafka")
    resolved = {n: {k: _interpolate(v, env) for k, v in s["environment"].items()} for n, s in nodes.items()}
    voters = {f"{r['KAFKA_NODE_ID']}@{n}:9093" for n, r in resolved.items()}
    rf, isr = replication(3)
    for name, r in resolved.items():
        assert set(r["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == voters, name
        assert r["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert int(r["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == rf
        assert int(r["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == rf
        assert int(r["KAFKA_MIN_INSYNC_REPLICAS"]) == isr
        assert r["CLUSTER_ID"] == resolved["kafka"]["CLUSTER_ID"]
    app = {k: _interpolate(v, env) for k, v in doc["services"]["sink"]["environment"].items()}
    assert set(app["RFTLOOP_KAFKA_BOOTSTRAP_SERVERS"].split(",")) == {f"{n}:9092" for n in nodes}
    assert int(app["RFTLOOP_KAFKA_REPLICATION_FACTOR"]) == rf
    # without the env file: the one-node stack as before
    single = {k: _interpolate(v, {}) for k, v in nodes["kafka"]["environment"].items()}
    assert single["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert single["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "1"

"""`rftloop up | status | down` as a user runs them, on their own ports and state dir."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from infra.local.process import free_port
from schemas.topics import ALL_TOPICS

ROOT = Path(__file__).resolve().parents[2]


def _env(state: Path, ports: dict[str, int]) -> dict[str, str]:
    return {
        **os.environ,
        "RFTLOOP_LOCAL_STATE_DIR": str(state),
        "RFTLOOP_LOCAL_KAFKA_PORT": str(ports["kafka"]),
        "RFTLOOP_LOCAL_KAFKA_CONTROLLER_PORT": str(ports["controller"]),
        "RFTLOOP_LOCAL_REGISTRY_PORT": str(ports["registry"]),
        "RFTLOOP_LOCAL_CLICKHOUSE_PORT": str(ports["clickhouse"]),
        "RFTLOOP_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{ports['kafka']}",
        "RFTLOOP_REGISTRY_URL": f"http://127.0.0.1:{ports['registry']}/apis/ccompat/v7",
        "RFTLOOP_CLICKHOUSE_URL": f"http://127.0.0.1:{ports['clickhouse']}",
    }


def _rftloop(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_up_status_down_round_trip(tmp_path: Path) -> None:
    ports = {k: free_port() for k in ("kafka", "controller", "registry", "clickhouse")}
    env = _env(tmp_path / "state", ports)
    try:
        up = _rftloop(env, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        topics = 2 * len(ALL_TOPICS)  # each event topic and its dead-letter topic
        assert f"topics: {topics} created" in up.stdout
        assert "schema llm.inference.completed-value: registered" in up.stdout

        again = _rftloop(env, "up")  # a second up is harmless
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stdout and f"topics: 0 created, {topics} ok" in again.stdout
        assert "unchanged" in again.stdout

        st = _rftloop(env, "status", "--json")
        assert st.returncode == 0
        assert {c["name"]: c["healthy"] for c in json.loads(st.stdout)} == {
            "kafka": True,
            "registry": True,
            "clickhouse": True,
        }
    finally:
        down = _rftloop(env, "down")
    assert down.returncode == 0, down.stderr
    st = _rftloop(env, "status", "--json")
    assert st.returncode == 1
    assert all(not c["healthy"] and c["detail"] == "not running" for c in json.loads(st.stdout))


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    ports = {k: free_port() for k in ("kafka", "controller", "registry", "clickhouse")}
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", ports["clickhouse"]))
    blocker.listen()
    env = _env(tmp_path / "state", ports)
    try:
        up = _rftloop(env, "up", "--no-init")
        assert up.returncode == 1
        assert f"port {ports['clickhouse']} is already in use" in up.stderr
        assert "RFTLOOP_LOCAL_CLICKHOUSE_PORT" in up.stderr
    finally:
        blocker.close()
        _rftloop(env, "down")


def test_bad_setting_names_the_variable(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "RFTLOOP_KAFKA_BOOTSTRAP_SERVERS": "not a broker list",
        "RFTLOOP_LOCAL_STATE_DIR": str(tmp_path),
    }
    r = _rftloop(env, "topics", "ensure")
    assert r.returncode == 2
    assert "RFTLOOP_KAFKA_BOOTSTRAP_SERVERS" in r.stderr and "host:port" in r.stderr


def test_unreachable_broker_names_the_setting(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "RFTLOOP_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "RFTLOOP_LOCAL_STATE_DIR": str(tmp_path),
    }
    r = _rftloop(env, "topics", "ensure", timeout=120)
    assert r.returncode == 1
    assert f"cannot talk to Kafka at 127.0.0.1:{port} (RFTLOOP_KAFKA_BOOTSTRAP_SERVERS)" in r.stderr

"""`rftloop topics ensure` and `rftloop schemas check` against the session's stack."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from infra.kafka import admin, ensure_topics
from schemas.topics import ALL_TOPICS, COMPLETED

ROOT = Path(__file__).resolve().parents[2]


def _cli(stack, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env={**os.environ, **stack.env()},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ensure_creates_then_reports_differences_without_changing(stack) -> None:
    first = ensure_topics(stack.kafka)
    assert {r.topic for r in first} == {t.name for t in ALL_TOPICS} | {t.dlq for t in ALL_TOPICS}
    a = admin(stack.kafka)
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        COMPLETED.name,
        incremental_configs=[
            ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    for fut in a.incremental_alter_configs([res]).values():
        fut.result()

    def retention() -> str:
        (fut,) = a.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, COMPLETED.name)]).values()
        return str(fut.result()["retention.ms"].value)

    # the broker applies a config change from its metadata log a moment after the alter returns
    deadline = time.monotonic() + 30
    while retention() != "1000" and time.monotonic() < deadline:
        time.sleep(0.1)
    reports = {r.topic: r for r in ensure_topics(stack.kafka)}
    assert reports[COMPLETED.name].action == "differs"
    assert any("retention.ms=1000" in d for d in reports[COMPLETED.name].differences)
    assert all(r.action == "ok" for n, r in reports.items() if n != COMPLETED.name)
    assert retention() == "1000"  # reported, not changed


def test_schemas_register_then_check_rejects_field_without_default(stack, tmp_path) -> None:
    reg = _cli(stack, "schemas", "register")
    assert reg.returncode == 0, reg.stderr
    ok = _cli(stack, "schemas", "check")
    assert ok.returncode == 0 and ok.stdout.count("ok ") == len(ALL_TOPICS)

    bad = copy.deepcopy(json.loads(COMPLETED.schema_path.read_text()))
    bad["fields"].append({"name": "gpu_kind", "type": "string", "doc": "no default"})
    path = tmp_path / "bad.avsc"
    path.write_text(json.dumps(bad))
    r = _cli(stack, "schemas", "check", "--topic", COMPLETED.name, "--file", str(path))
    assert r.returncode == 1
    assert "INCOMPATIBLE llm.inference.completed-value" in r.stdout and "'gpu_kind'" in r.stdout

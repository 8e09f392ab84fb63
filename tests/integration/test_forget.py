"""`rftloop forget --user U` on the real pieces: ClickHouse rows deleted, model.versions marked and
retired, the erasure event on its topic, and the person kept out of every later training query."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from consumers.trainer.data import load_samples
from infra.clickhouse.client import connect
from infra.clickhouse.migrate import migrate
from infra.clickhouse.tables import event_table
from infra.erasure import PERSONAL, forget
from infra.publish import publish_event
from infra.versions import BASE, read_fold
from schemas.events import (
    CompletionStatus,
    Endpoint,
    FeedbackKind,
    FeedbackSource,
    FeedbackSubmitted,
    InferenceCompleted,
    InferenceRequested,
    ModelVersionEvent,
    OffsetRange,
    RewardedSample,
    RewardSource,
    TaintPolicy,
    VersionEventKind,
)
from schemas.topics import COMPLETED, ERASURES, FEEDBACK, REQUESTED, REWARDED, VERSIONS
from tests.integration.streams_support import read_topic

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
M = "smollm2-135m-instruct"


def _rows(client: Any, db: str, suffix: str) -> None:
    """What the sink would hold: alice's requests r0-r3 and bob's r4-r11, each with a response, a
    thumbs from the user and a rewarded sample at offset i of partition 0."""
    sample_topic = REWARDED.name + suffix
    out: dict[str, list[list[Any]]] = {}
    for i in range(12):
        user = "alice" if i < 4 else "bob"
        rid = f"r{i}"
        events = [
            (
                REQUESTED,
                InferenceRequested(
                    producer="t",
                    request_id=rid,
                    model=M,
                    endpoint=Endpoint.chat,
                    prompt=f"q{i}",
                    user_id=user,
                ),
            ),
            (
                COMPLETED,
                InferenceCompleted(
                    producer="t",
                    request_id=rid,
                    model=M,
                    status=CompletionStatus.ok,
                    completion=f"a{i}",
                    latency_ms=1.0,
                    cost=Decimal("0"),
                    user_id=user,
                ),
            ),
            (
                FEEDBACK,
                FeedbackSubmitted(
                    producer="t",
                    request_id=rid,
                    model=M,
                    kind=FeedbackKind.thumbs,
                    value=1.0,
                    source=FeedbackSource.user,
                    user_id=user,
                ),
            ),
            (
                REWARDED,
                RewardedSample(
                    producer="t",
                    request_id=rid,
                    model=M,
                    prompt=f"q{i}",
                    completion=f"a{i}",
                    reward=1.0,
                    reference=f"a{i}",
                    reward_sources=[RewardSource(source=FeedbackSource.user, kind="thumbs", value=1.0)],
                    user_id=user,
                ),
            ),
        ]
        for spec, event in events:
            table = event_table(spec)
            row = table.row(event.to_avro(), 0, i)
            if spec is REWARDED:
                row[-3] = sample_topic  # the offsets a lineage names are on the suffixed topic
            out.setdefault(table.name, []).append(row)
    for spec in (REQUESTED, COMPLETED, FEEDBACK, REWARDED):
        table = event_table(spec)
        client.insert(f"{db}.{table.name}", out[table.name], column_names=table.column_names)


def _count(client: Any, db: str, user: str) -> dict[str, int]:
    return {
        t: int(
            client.query(
                f"SELECT count() FROM {db}.{t} FINAL WHERE user_id = {{u:String}}", parameters={"u": user}
            ).result_rows[0][0]
        )
        for t in PERSONAL
    }


def test_forget_deletes_marks_retires_records_and_keeps_the_person_out_of_training(
    stack: Any, ch_database: str, event_topic: Any, unique: str
) -> None:
    suffix = f"-{unique}"
    versions_topic, versions_serde = event_topic(VERSIONS)
    erasures_topic, erasures_serde = event_topic(ERASURES)
    for spec in (REQUESTED, COMPLETED, FEEDBACK, REWARDED):
        event_topic(spec)  # where Kafka holds the person's events (their retention goes in the report)
    client = connect(stack.clickhouse, database=ch_database)
    migrate(client, ch_database)
    _rows(client, ch_database, suffix)
    samples_topic = REWARDED.name + suffix

    def version(
        kind: VersionEventKind, v: str, parent: str | None = None, span: tuple[int, int] | None = None
    ) -> None:
        lineage = (
            [
                OffsetRange(
                    topic=samples_topic, partition=0, first_offset=span[0], last_offset=span[1], samples=4
                )
            ]
            if span
            else []
        )
        event = ModelVersionEvent(
            producer="t", kind=kind, model=M, version=v, parent_version=parent, lineage=lineage, decision="x"
        )
        publish_event(stack.kafka, stack.registry, VERSIONS, event, suffix)

    # va trained on r2-r5 (two of alice's); vb continued va on r6-r9 (bob's only); vc, from base on
    # r8-r11, is a canary beside vb
    version(VersionEventKind.published, "va", BASE, (2, 5))
    version(VersionEventKind.promoted, "va")
    version(VersionEventKind.published, "vb", "va", (6, 9))
    version(VersionEventKind.promoted, "vb")
    version(VersionEventKind.published, "vc", "vb", (8, 11))
    version(VersionEventKind.published, "vd", BASE, (8, 11))
    settings = dict(
        kafka=stack.kafka,
        registry=stack.registry,
        clickhouse=stack.clickhouse.model_copy(update={"database": ch_database}),
        topic_suffix=suffix,
    )

    dry = forget("alice", dry_run=True, **settings)
    assert (
        dry.event.deleted == {t: 4 for t in PERSONAL}
        and _count(client, ch_database, "alice")["inference_requested"] == 4
    )
    assert (
        dry.event.tainted_versions == ["va", "vb", "vc"]
        and read_fold(stack.kafka, stack.registry, suffix).model(M).tainted == {}
    )

    report = forget("alice", policy=TaintPolicy.retire, actor="test", reason="ticket 7", **settings)
    e = report.event
    assert e.requests == 4 and e.deleted == {t: 4 for t in PERSONAL}
    assert e.tainted_versions == ["va", "vb", "vc"]  # vb, vc: descendants of va, whose weights carry r2, r3
    assert e.retired_versions == ["va", "vc", "vb"]  # the incumbent last
    assert [(s.offset) for s in e.samples] == [0, 1, 2, 3]
    assert _count(client, ch_database, "alice") == {t: 0 for t in PERSONAL}
    assert _count(client, ch_database, "bob") == {t: 8 for t in PERSONAL}  # nobody else touched
    assert e.kafka_held_until is not None and {h.topic for h in report.kafka} == {
        s.name + suffix for s in (REQUESTED, COMPLETED, FEEDBACK, REWARDED)
    }
    text = "\n".join(report.lines())
    print(text)
    assert "deleted      4 row(s) from rewarded_samples" in text and "Kafka still holds" in text

    state = read_fold(stack.kafka, stack.registry, suffix).model(M)
    assert set(state.tainted) == {"va", "vb", "vc"} and state.incumbent == BASE  # vb's clean ancestor
    assert state.ended["va"] == state.ended["vb"] == state.ended["vc"] == VersionEventKind.rolled_back
    assert "vd" in state.canaries and "vd" not in state.tainted  # trained only on bob's data
    (erased,) = read_topic(stack.kafka, erasures_topic.name, erasures_serde, idle_s=1.0)
    assert erased.user_id == "alice" and erased.reason == "ticket 7" and erased.event_id == e.event_id

    # a copy comes back (a sink replay of Kafka's retained events): training still never sees it
    table = event_table(REWARDED)
    ghost = RewardedSample(
        producer="t",
        request_id="r1",
        model=M,
        prompt="q1",
        completion="a1",
        reward=1.0,
        reward_sources=[],
        user_id="alice",
    )
    client.insert(
        f"{ch_database}.{table.name}", [table.row(ghost.to_avro(), 0, 1)], column_names=table.column_names
    )
    assert {s.request_id for s in load_samples(client, ch_database, M)} == {f"r{i}" for i in range(4, 12)}

    # forgetting again finds the copy, keeps the positions found the first time, publishes no decision twice
    again = forget("alice", **settings)
    assert again.already and again.event.deleted["rewarded_samples"] == 1
    assert again.event.tainted_versions == ["va", "vb", "vc"] and again.event.retired_versions == []
    decisions = read_topic(stack.kafka, versions_topic.name, versions_serde, idle_s=1.0)
    for kind in (VersionEventKind.tainted, VersionEventKind.rolled_back):
        assert sorted(d.version for d in decisions if d.kind == kind) == ["va", "vb", "vc"]

    # the CLI: bob, dry run, as JSON; then the report as text; nothing deleted
    env = {
        **os.environ,
        **stack.env(),
        "RFTLOOP_CLICKHOUSE_DATABASE": ch_database,
        "RFTLOOP_PRIVACY_TOPIC_SUFFIX": suffix,
    }
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "forget", "--user", "bob", "--dry-run", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert (
        json.loads(out.stdout)["tainted_versions"] == ["va", "vb", "vc", "vd"]
        and _count(client, ch_database, "bob")["inference_requested"] == 8
    )
    bad = subprocess.run(
        [sys.executable, "-m", "cli.main", "forget", "--user", ""],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "user_id" in bad.stderr

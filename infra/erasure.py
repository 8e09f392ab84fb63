"""Erase one person: their rows in ClickHouse, their samples from every later training run, and the
model versions trained on them (``rftloop forget --user U``, ``POST /admin/forget``).

What one erasure does, in this order (each step is idempotent, so a failed erasure is re-run whole):

1. **Find** the person's requests (``inference_requested.user_id``, ``rewarded_samples.user_id``),
   every row about them in the tables that hold personal data (requests, responses, feedback on
   them or given by the person, rewarded samples), and the Kafka positions of their rewarded samples
   (plus the positions a previous erasure of the same person recorded: the rows are gone by then).
2. **Exclude**: a row in ``user_erasures`` (written here directly, and again by the sink from the
   compacted ``privacy.erasures`` topic). Every training query reads only rows whose ``user_id`` is
   not in it (``not_erased``), so a sample of the person that comes back (a sink replay of Kafka's
   retained copies, late feedback joined to an old request) never reaches a run.
3. **Delete** with ``ALTER TABLE ... DELETE`` and ``mutations_sync = 2``: the parts are rewritten
   without the rows before the command returns (a lightweight ``DELETE`` only masks rows until a
   merge), on a cluster on every replica of the ``_local`` tables.
4. **Mark** on ``model.versions`` every version whose lineage covers one of the samples, and every
   descendant of one (each generation continues its parent's adapter, so the weights carry the data
   on): ``tainted``, with the erasure in its reasons. Policy ``retire`` (the default, the safe one)
   then rolls every tainted version back that can still serve (live, or pinnable), the incumbent
   last, to its nearest untainted ancestor. Policy ``retrain`` leaves them serving; the next training
   run starts from the nearest untainted ancestor on data without the person, and the canary judge
   replaces the tainted incumbent as it replaces any incumbent.
5. **Record** a ``UserErased`` event, so other consumers of the events can act.

Kafka itself cannot delete single records from a ``delete``-policy topic: the person's events stay
on the brokers until their segment expires. The report says until when (their last event plus the
topic's ``retention.ms`` plus ``segment.ms``, the longest a segment can stay open).
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from confluent_kafka import KafkaException
from confluent_kafka.admin import ConfigResource

from infra.clickhouse.client import connect
from infra.clickhouse.tables import event_table
from infra.kafka import admin
from infra.publish import publish_event
from infra.settings import ClickHouseSettings, KafkaSettings, RegistrySettings
from infra.versions import ModelState, read_fold
from schemas.events import ModelVersionEvent, SamplePosition, TaintPolicy, UserErased, VersionEventKind
from schemas.topics import COMPLETED, ERASURES, FEEDBACK, REQUESTED, REWARDED, VERSIONS, TopicSpec

PRODUCER = "rftloop-forget"
DAY_MS = 24 * 3600 * 1000
NAMESPACE = uuid.UUID("6f1d6c3e-2a8b-4b7e-9a51-1c0de0f1a005")


class ErasureError(ValueError):
    """An erasure asked for wrongly (no user id)."""


def not_erased(db: str) -> str:
    """SQL condition on a table with ``user_id``: the row's person has not been erased."""
    return f"ifNull(user_id, '') NOT IN (SELECT user_id FROM {db}.user_erasures)"


# The tables that hold personal data, and which rows of each are the person's ({ids}: their
# request ids). metrics_windows (aggregates), model_versions, training_runs and training_steps hold none.
PERSONAL: dict[str, tuple[TopicSpec, str]] = {
    "inference_requested": (REQUESTED, "user_id = {user:String} OR request_id IN {ids:Array(String)}"),
    "inference_completed": (COMPLETED, "user_id = {user:String} OR request_id IN {ids:Array(String)}"),
    "feedback_submitted": (FEEDBACK, "user_id = {user:String} OR request_id IN {ids:Array(String)}"),
    "rewarded_samples": (REWARDED, "user_id = {user:String} OR request_id IN {ids:Array(String)}"),
}


@dataclass(frozen=True)
class KafkaHold:
    topic: str
    last_event: datetime
    until: datetime | None  # None: retention.ms = -1, kept until deleted by hand


@dataclass
class ErasureReport:
    event: UserErased
    kafka: list[KafkaHold] = field(default_factory=list)
    already: bool = False  # the person was erased before (this run re-did it)
    dry_run: bool = False

    def lines(self) -> list[str]:
        e = self.event
        verb = "would delete" if self.dry_run else "deleted"
        out = [f"{'dry run: ' if self.dry_run else ''}erasing user {e.user_id!r} (policy {e.policy.value})"]
        if self.already:
            out.append("  erased before: this repeats it (anything that came back since is gone again)")
        out.append(f"  {e.requests} request(s) found; {len(e.samples)} rewarded sample(s) by Kafka position")
        for table, n in e.deleted.items():
            out.append(f"  {verb} {n:>6} row(s) from {table}")
        if e.tainted_versions:
            out.append(f"  versions trained on them (lineage or ancestor): {', '.join(e.tainted_versions)}")
        else:
            out.append("  no model version was trained on them")
        if e.retired_versions:
            out.append(f"  rolled back now (policy retire): {', '.join(e.retired_versions)}")
        elif e.tainted_versions and e.policy == TaintPolicy.retrain:
            out.append(
                "  kept serving (policy retrain): the next run trains without them from a clean parent"
            )
        for h in self.kafka:
            until = (
                "until deleted by hand (retention.ms=-1)"
                if h.until is None
                else f"until {h.until:%Y-%m-%d %H:%M} UTC"
            )
            out.append(
                f"  Kafka still holds their events on {h.topic} (last {h.last_event:%Y-%m-%d %H:%M}) {until}"
            )
        if self.kafka:
            out.append(
                "  (training excludes them meanwhile; a sink replay would re-insert rows: run forget again)"
            )
        return out


def _retention(kafka: KafkaSettings, topics: dict[str, TopicSpec]) -> dict[str, tuple[int, int]]:
    """(retention.ms, segment.ms) of each topic as the brokers have them; for a topic they do not
    know, as rftloop creates it (Kafka's default segment.ms, 7 days)."""
    a = admin(kafka)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics]
    out = {}
    for r, fut in a.describe_configs(resources).items():
        try:
            conf = fut.result()
            out[r.name] = (int(conf["retention.ms"].value), int(conf["segment.ms"].value))
        except KafkaException:
            spec = topics[r.name]
            out[r.name] = (int(spec.config.get("retention.ms", 7 * DAY_MS)), 7 * DAY_MS)
    return out


def retire_events(state: ModelState, model: str, tainted: list[str], erasure: str) -> list[ModelVersionEvent]:
    """``rolled_back`` for each tainted version that can still serve: the canaries and the replaced
    incumbents (pinnable) first, the incumbent last, back to its nearest untainted ancestor."""
    ended = {
        v for v, k in state.ended.items() if k in (VersionEventKind.rolled_back, VersionEventKind.rejected)
    }
    reason = f"retired: trained on data of a person since erased ({erasure})"
    events = []
    for version in tainted:
        if version in ended or version == state.incumbent:
            continue
        events.append(_version_event(model, version, VersionEventKind.rolled_back, [reason]))
    if state.incumbent in tainted:
        to = state.clean_ancestor(state.incumbent)
        events.append(
            _version_event(
                model, state.incumbent, VersionEventKind.rolled_back, [f"{reason}; back to {to}"], to
            )
        )
    return events


def _version_event(
    model: str, version: str, kind: VersionEventKind, reasons: list[str], parent: str | None = None
) -> ModelVersionEvent:
    return ModelVersionEvent(
        producer=PRODUCER,
        kind=kind,
        model=model,
        version=version,
        parent_version=parent,
        decision="tainted" if kind == VersionEventKind.tainted else "rollback",
        reasons=reasons,
        actor="forget",
        traffic_share=None if kind == VersionEventKind.tainted else 0.0,
    )


def forget(
    user: str,
    *,
    kafka: KafkaSettings,
    registry: RegistrySettings,
    clickhouse: ClickHouseSettings,
    policy: TaintPolicy = TaintPolicy.retire,
    actor: str = "cli",
    reason: str | None = None,
    topic_suffix: str = "",
    dry_run: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> ErasureReport:
    """Erase ``user`` (see the module doc); with ``dry_run``, find and report only."""
    if not user or not user.strip():
        raise ErasureError("forget needs the user_id to erase (--user)")
    db = clickhouse.database
    client = connect(clickhouse)
    on = f" ON CLUSTER {clickhouse.cluster}" if clickhouse.cluster else ""
    local = "_local" if clickhouse.cluster else ""

    say("finding their requests and samples")
    p = {"user": user}
    ids = sorted(
        {
            r[0]
            for r in client.query(
                f"SELECT DISTINCT request_id FROM {db}.inference_requested WHERE user_id = {{user:String}}",
                parameters=p,
            ).result_rows
        }
        | {
            r[0]
            for r in client.query(
                f"SELECT DISTINCT request_id FROM {db}.rewarded_samples WHERE user_id = {{user:String}}",
                parameters=p,
            ).result_rows
        }
    )
    p_ids = {"user": user, "ids": ids}
    positions = {
        (str(t), int(part), int(o))
        for t, part, o in client.query(
            f"SELECT DISTINCT _topic, _partition, _offset FROM {db}.rewarded_samples "
            f"WHERE {PERSONAL['rewarded_samples'][1]}",
            parameters=p_ids,
        ).result_rows
    }
    before = client.query(
        f"SELECT samples FROM {db}.user_erasures FINAL WHERE user_id = {{user:String}}", parameters=p
    ).result_rows
    for (text,) in before:
        positions |= {(s["topic"], int(s["partition"]), int(s["offset"])) for s in json.loads(text)}
    counts: dict[str, int] = {}
    holds: list[KafkaHold] = []
    last_seen: dict[str, datetime] = {}
    specs: dict[str, TopicSpec] = {}
    for table, (spec, where) in PERSONAL.items():
        n, last = client.query(
            f"SELECT count(), max(occurred_at) FROM {db}.{table} FINAL WHERE {where}", parameters=p_ids
        ).result_rows[0]
        counts[table] = int(n)
        if n:
            last_seen[spec.name + topic_suffix] = last
            specs[spec.name + topic_suffix] = spec
    if last_seen:
        for topic, (retention_ms, segment_ms) in _retention(kafka, specs).items():
            last = last_seen[topic]
            until = None if retention_ms < 0 else last + timedelta(milliseconds=retention_ms + segment_ms)
            holds.append(KafkaHold(topic, last, until))

    say("finding the model versions trained on them")
    event_id = uuid.uuid5(NAMESPACE, user)  # one id per person: a repeat replaces the row, with
    erasure = f"erasure {event_id} (privacy.erasures)"  # every position found so far; never the name
    fold = read_fold(kafka, registry, topic_suffix)
    marks: list[ModelVersionEvent] = []
    retires: list[ModelVersionEvent] = []
    tainted: list[str] = []
    for model, state in fold.models.items():
        versions = state.trained_on(positions)
        tainted += versions
        for v in versions:
            if not any(erasure in r for r in state.tainted.get(v, [])):
                marks.append(_version_event(model, v, VersionEventKind.tainted, [erasure]))
                fold.apply(marks[-1])  # so the ancestors to fall back to skip them too
        if policy == TaintPolicy.retire:
            retires += retire_events(state, model, versions, erasure)
    event = UserErased(
        event_id=event_id,
        producer=PRODUCER,
        user_id=user,
        actor=actor,
        reason=reason,
        policy=policy,
        requests=len(ids),
        deleted=counts,
        samples=[SamplePosition(topic=t, partition=part, offset=o) for t, part, o in sorted(positions)],
        tainted_versions=tainted,
        retired_versions=[e.version for e in retires],
        kafka_held_until=max((h.until for h in holds if h.until), default=None),
    )
    report = ErasureReport(event, sorted(holds, key=lambda h: h.topic), already=bool(before), dry_run=dry_run)
    if dry_run:
        return report

    say("excluding them from every later training run")
    erasures = replace(event_table(ERASURES), topic=replace(ERASURES, name=ERASURES.name + topic_suffix))
    client.insert(
        f"{db}.user_erasures",
        [erasures.row(event.to_avro(), 0, 0)],  # the sink's copy (same event_id) has the true offset
        column_names=erasures.column_names,
    )
    for table, (_, where) in PERSONAL.items():
        if counts[table]:
            say(f"deleting {counts[table]} row(s) from {table}")
            client.command(
                f"ALTER TABLE {db}.{table}{local}{on} DELETE WHERE {where}",
                parameters=p_ids,
                settings={"mutations_sync": 2},
            )
    decisions = marks + retires
    for earlier, after in itertools.pairwise(decisions):
        # strictly later, so a reader that orders by time (the version_state view's argMax) agrees
        # with the topic's order: built in the same millisecond, `tainted` and `rolled_back` tied
        if after.occurred_at <= earlier.occurred_at:
            after.occurred_at = earlier.occurred_at + timedelta(milliseconds=1)
    for e in decisions:
        say(f"{'marking' if e.kind == VersionEventKind.tainted else 'rolling back'} {e.version}")
        _publish(kafka, registry, VERSIONS, topic_suffix, e)
    _publish(kafka, registry, ERASURES, topic_suffix, event)
    return report


def _publish(
    kafka: KafkaSettings,
    registry: RegistrySettings,
    spec: TopicSpec,
    suffix: str,
    event: UserErased | ModelVersionEvent,
) -> None:
    publish_event(kafka, registry, spec, event, suffix)

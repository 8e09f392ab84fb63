"""The state of ``model.versions``, folded once: per served model, its incumbent and its canaries.

Every reader of the topic (the canary judge, the gateways, the trainer) asks this fold who serves,
so a decision means the same thing everywhere — a manual rollback of the incumbent makes the event's
``parent_version`` (else ``base``) the incumbent again, for the judge as for the router.

- ``published``: the version joins as a canary with its traffic share (the incumbent at that
  moment is the one it is compared with);
- ``ramped``: a live canary's share changes (a decided version is never revived by a late ramp);
- ``promoted``: the version becomes the incumbent; every other canary of the model keeps running;
- ``rolled_back``: the version stops serving; if it was the incumbent, its parent takes over;
- ``rejected``: the gate refused it; it never served. A ``rejected`` event with decision
  ``refused`` is one gateway's report that it could not load the adapter (actor ``gateway:<name>``):
  recorded in ``refusals``, it ends nothing (other replicas may serve it);
- ``tainted``: the version (or an ancestor: a generation continues its parent's adapter) was
  trained on data of a person since erased (``infra/erasure.py``). Recorded in ``tainted``; it ends
  nothing by itself (policy ``retire`` follows it with a ``rolled_back``), and a new training run
  starts from the nearest untainted ancestor (``clean_ancestor``), never from a tainted adapter.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime

from infra import registry as registry_mod
from infra.kafka import assign_from_start, consumer
from infra.retry import Retrier
from infra.serde import SerdeError, TopicSerde
from infra.settings import KafkaSettings, RegistrySettings
from schemas.events import ModelVersionEvent, VersionEventKind
from schemas.topics import VERSIONS

BASE = "base"


@dataclass
class Canary:
    """A published version that is neither promoted nor rolled back yet."""

    model: str
    version: str
    incumbent: str  # the incumbent when it was published
    since: datetime  # when it was published
    share: float | None = None  # None: the event named none (a gateway applies its default)


@dataclass
class ModelState:
    incumbent: str = BASE
    canaries: dict[str, Canary] = field(default_factory=dict)
    ended: dict[str, VersionEventKind] = field(default_factory=dict)  # rolled back / rejected / replaced
    refusals: dict[str, dict[str, str]] = field(default_factory=dict)  # version -> gateway -> reason
    published: dict[str, ModelVersionEvent] = field(default_factory=dict)  # lineage, adapter, eval
    tainted: dict[str, list[str]] = field(default_factory=dict)  # version -> reasons (erasures)

    def parent(self, version: str) -> str:
        published = self.published.get(version)
        return (published.parent_version if published else None) or BASE

    def clean_ancestor(self, version: str) -> str:
        """``version`` itself if untainted, else its nearest untainted ancestor (``base`` at worst)."""
        seen = set()
        while version != BASE and version in self.tainted and version not in seen:
            seen.add(version)
            version = self.parent(version)
        return version if version not in self.tainted else BASE

    def trained_on(self, positions: set[tuple[str, int, int]]) -> list[str]:
        """Versions whose lineage covers any of ``positions`` (topic, partition, offset), and every
        descendant of one (its adapter continued the tainted weights), in publish order.

        A lineage keeps offset ranges, not each sample, so a position inside a range counts: this
        may name a version that held the sample out for its gate, never miss one that trained on it."""
        by_tp: dict[tuple[str, int], list[int]] = {}
        for topic, partition, offset in positions:
            by_tp.setdefault((topic, partition), []).append(offset)
        out: list[str] = []
        for version, event in self.published.items():  # dicts keep publish order: parents first
            direct = any(
                r.first_offset <= o <= r.last_offset
                for r in event.lineage
                for o in by_tp.get((r.topic, r.partition), ())
            )
            if direct or self.parent(version) in out:
                out.append(version)
        return out


class VersionFold:
    """Apply ``ModelVersionEvent``s in topic order; ask for incumbents and canaries."""

    def __init__(self) -> None:
        self.models: dict[str, ModelState] = {}

    def model(self, name: str) -> ModelState:
        return self.models.setdefault(name, ModelState())

    def incumbent(self, model: str) -> str:
        return self.model(model).incumbent

    def canaries(self) -> list[Canary]:
        return [c for m in self.models.values() for c in m.canaries.values()]

    def apply(self, e: ModelVersionEvent) -> None:
        m = self.model(e.model)
        if e.kind == VersionEventKind.published:
            m.published.setdefault(e.version, e)
            if e.version not in m.canaries and e.version not in m.ended and e.version != m.incumbent:
                m.canaries[e.version] = Canary(
                    e.model, e.version, m.incumbent, e.occurred_at, e.traffic_share
                )
        elif e.kind == VersionEventKind.ramped:
            if e.version in m.canaries and e.traffic_share is not None:
                m.canaries[e.version].share = e.traffic_share
        elif e.kind == VersionEventKind.promoted:
            m.canaries.pop(e.version, None)
            m.ended.pop(e.version, None)
            if m.incumbent != e.version:
                m.ended[m.incumbent] = VersionEventKind.promoted  # replaced by a promoted version
            m.incumbent = e.version
        elif e.kind == VersionEventKind.rolled_back:
            m.canaries.pop(e.version, None)
            m.ended[e.version] = e.kind
            if m.incumbent == e.version:
                # back to the parent the event names, else the one it was published from
                published = m.published.get(e.version)
                parent = e.parent_version or (published.parent_version if published else None)
                m.incumbent = parent if parent and parent != e.version else BASE
                m.ended.pop(m.incumbent, None)
        elif e.kind == VersionEventKind.rejected and e.decision == "refused":
            m.refusals.setdefault(e.version, {})[e.actor or e.producer] = "; ".join(e.reasons or [])
        elif e.kind == VersionEventKind.rejected:
            m.ended[e.version] = e.kind
        elif e.kind == VersionEventKind.tainted:
            reasons = m.tainted.setdefault(e.version, [])
            reasons += [r for r in e.reasons if r not in reasons]


def read_fold(kafka: KafkaSettings, registry: RegistrySettings, topic_suffix: str = "") -> VersionFold:
    """``model.versions`` read from its start to where it ends now, folded (a one-off reader such
    as the trainer; the judge and the gateways follow the topic and fold as they go)."""
    topic = replace(VERSIONS, name=VERSIONS.name + topic_suffix)
    serde = TopicSerde(registry_mod.client(registry), topic)
    fold = VersionFold()
    c = consumer(kafka, f"rftloop-versions-read-{uuid.uuid4().hex[:8]}")
    try:
        retry = Retrier("reading model.versions")
        ends = assign_from_start(c, [topic.name], retry)
        while ends:
            for msg in c.consume(500, 1.0):
                if msg.error():
                    continue
                where = (msg.topic() or "", msg.partition() or 0)
                if where in ends and (msg.offset() or 0) + 1 >= ends[where]:
                    del ends[where]
                try:
                    event = serde.decode_event(msg.value())
                except SerdeError:
                    continue  # the judge and the gateways log it; a reader of the state skips it
                if isinstance(event, ModelVersionEvent):
                    fold.apply(event)
    finally:
        c.close()
    return fold

"""The canary judge: compare a candidate with its incumbent on live MetricsWindows; promote or roll back.

It follows ``model.versions`` (who is incumbent, which candidates are in
canary) and the closed MetricsWindows of one window spec (tumbling 10 s by
default). For a candidate it sums both versions' windows that started after the
candidate was published — the same period for both — and decides:

- roll back at once when the candidate breaks a budget: error rate above the
  incumbent's by more than ``max_error_rate_increase``, p95 latency or cost per
  request above the incumbent's times the allowed ratio (latency p95 from the
  merged DDSketches, so it is the true p95 of the period, not a mean of p95s);
- with at least ``min_samples`` rewarded responses on each side, test the
  reward: the share of positive feedback (thumbs up; else reward > 0) in a
  two-proportion z-test at ``confidence``: significantly worse -> roll back,
  significantly better -> promote;
- not significant yet but holding up (z >= 0): ramp its traffic share through
  ``ramp_steps`` (one step per ``min_samples`` rated responses), so a good
  candidate is decided sooner and a bad one is caught at the first, small share;
- no significant difference after ``max_samples`` -> roll back ("not shown to
  be better"), so an unproven version never takes over by waiting.

Each decision is a ModelVersionEvent (promoted / rolled_back) with the figures
and the reasons; the gateways apply it at once. Decisions already on the
topic (manual ones too) are respected on restart.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from functools import partial
from statistics import NormalDist

from infra import registry as registry_mod
from infra.kafka import assign_from_start, consumer
from infra.publish import publish_event
from infra.retry import Retrier, Stopped
from infra.serde import SerdeError, TopicSerde
from infra.settings import JudgeSettings, KafkaSettings, RegistrySettings
from schemas.events import MetricsWindow, ModelVersionEvent, VersionEventKind
from schemas.topics import METRICS, VERSIONS
from streams.sketch import DDSketch

log = logging.getLogger(__name__)
PRODUCER = "rftloop-judge"
NAMESPACE = uuid.UUID("6f1d6c3e-2a8b-4b7e-9a51-1c0de0f1a003")


@dataclass
class Totals:
    requests: int = 0
    errors: int = 0
    positive: int = 0  # thumbs up, or rewards > 0 when a window has no thumbs
    rated: int = 0
    cost: Decimal = Decimal(0)
    latency: DDSketch = field(default_factory=DDSketch)

    def add(self, w: MetricsWindow) -> None:
        self.requests += w.requests
        self.errors += w.errors
        self.cost += w.cost_total
        votes = w.thumbs_up + w.thumbs_down
        if votes:
            self.positive += w.thumbs_up
            self.rated += votes
        elif w.reward_count and w.reward_mean is not None:
            # mean in [-1, 1] over n rewards -> how many were positive, assuming +-1 rewards
            self.positive += round(w.reward_count * (w.reward_mean + 1) / 2)
            self.rated += w.reward_count
        if w.latency_sketch:
            self.latency.merge(DDSketch.from_bytes(w.latency_sketch))

    @property
    def rate(self) -> float:
        return self.positive / self.rated if self.rated else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def cost_per_request(self) -> float:
        return float(self.cost) / self.requests if self.requests else 0.0

    def figures(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}_requests": float(self.requests),
            f"{prefix}_rated": float(self.rated),
            f"{prefix}_positive_rate": self.rate,
            f"{prefix}_error_rate": self.error_rate,
            f"{prefix}_latency_p95_ms": self.latency.quantile(0.95) or 0.0,
            f"{prefix}_cost_per_request": self.cost_per_request,
        }


@dataclass
class Verdict:
    kind: VersionEventKind | None  # None: keep watching
    reasons: list[str]
    figures: dict[str, float]
    share: float | None = None  # the new traffic share of a ramp


def two_proportion_z(p1: int, n1: int, p2: int, n2: int) -> float:
    """z of (rate1 - rate2) with the pooled standard error; 0 when it is undefined."""
    pooled = (p1 + p2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return 0.0 if se == 0 else (p1 / n1 - p2 / n2) / se


def judge(candidate: Totals, incumbent: Totals, cfg: JudgeSettings, share: float = 0.0) -> Verdict:
    """Decide on a candidate now serving `share` of the traffic (see the module doc)."""
    figures = {**candidate.figures("candidate"), **incumbent.figures("incumbent")}
    reasons = []
    if candidate.requests >= cfg.min_requests and incumbent.requests >= cfg.min_requests:
        if candidate.error_rate > incumbent.error_rate + cfg.max_error_rate_increase:
            reasons.append(
                f"error rate {candidate.error_rate:.3f} vs incumbent {incumbent.error_rate:.3f} "
                f"(budget +{cfg.max_error_rate_increase:.3f})"
            )
        c95, i95 = candidate.latency.quantile(0.95), incumbent.latency.quantile(0.95)
        if c95 and i95 and c95 > i95 * cfg.max_latency_ratio:
            reasons.append(f"p95 latency {c95:.0f} ms vs {i95:.0f} ms (budget {cfg.max_latency_ratio:.2f}x)")
        ci, ii = candidate.cost_per_request, incumbent.cost_per_request
        if ci and ii and ci > ii * cfg.max_cost_ratio:
            reasons.append(f"cost/request {ci:.6f} vs {ii:.6f} (budget {cfg.max_cost_ratio:.2f}x)")
        if reasons:
            return Verdict(VersionEventKind.rolled_back, reasons, figures)
    if candidate.rated < cfg.min_samples or incumbent.rated < cfg.min_samples:
        return Verdict(
            None,
            [f"waiting: {candidate.rated}/{incumbent.rated} rated responses of {cfg.min_samples}"],
            figures,
        )
    z = two_proportion_z(candidate.positive, candidate.rated, incumbent.positive, incumbent.rated)
    critical = NormalDist().inv_cdf(cfg.confidence)
    figures["z"] = z
    summary = (
        f"positive feedback {candidate.rate:.3f} (n={candidate.rated}) vs incumbent {incumbent.rate:.3f} "
        f"(n={incumbent.rated}), z={z:+.2f}, critical {critical:.2f} at {cfg.confidence:.0%}"
    )
    if z <= -critical:
        return Verdict(VersionEventKind.rolled_back, [f"worse: {summary}"], figures)
    if z >= critical:
        return Verdict(VersionEventKind.promoted, [f"better: {summary}"], figures)
    if candidate.rated >= cfg.max_samples:
        return Verdict(
            VersionEventKind.rolled_back,
            [f"not shown to be better after {candidate.rated}: {summary}"],
            figures,
        )
    # Holding up (not trending worse): give it more traffic, one step per min_samples rated responses,
    # so a good candidate is decided sooner while a bad one is caught at the small first share.
    steps = [x for x in cfg.steps() if x > share]
    done = len(cfg.steps()) - len(steps)
    if steps and z >= 0 and candidate.rated >= cfg.min_samples * (done + 1):
        return Verdict(
            VersionEventKind.ramped,
            [f"holding up, traffic {f'{share:.0%} ' if share else ''}-> {steps[0]:.0%}: {summary}"],
            figures,
            steps[0],
        )
    return Verdict(None, [f"undecided: {summary}"], figures)


@dataclass
class Canary:
    version: str
    incumbent: str
    since: datetime
    share: float = 0.0


class Judge:
    def __init__(self, kafka: KafkaSettings, registry: RegistrySettings, cfg: JudgeSettings) -> None:
        self.kafka, self.registry, self.cfg = kafka, registry, cfg
        reg = registry_mod.client(registry)
        self.versions_topic = replace(VERSIONS, name=VERSIONS.name + cfg.topic_suffix)
        self.metrics_topic = replace(METRICS, name=METRICS.name + cfg.topic_suffix)
        self.serde = {
            VERSIONS.name: TopicSerde(reg, self.versions_topic),
            METRICS.name: TopicSerde(reg, self.metrics_topic),
        }
        self.incumbent: dict[str, str] = {}  # model -> version
        self.canaries: dict[tuple[str, str], Canary] = {}
        self.windows: dict[tuple[str, str], list[MetricsWindow]] = {}
        self.decisions: list[ModelVersionEvent] = []
        self.caught_up = False  # replayed both topics up to their ends at start
        self._stop = threading.Event()
        self.kafka_retry = Retrier("judge", self._stop)

    def stop(self) -> None:
        self._stop.set()

    def on_version(self, e: ModelVersionEvent) -> None:
        key = (e.model, e.version)
        if e.kind == VersionEventKind.published:
            self.canaries[key] = Canary(
                e.version,
                self.incumbent.get(e.model, e.parent_version or "base"),
                e.occurred_at,
                e.traffic_share or 0.0,
            )
        elif e.kind == VersionEventKind.ramped and key in self.canaries:
            self.canaries[key].share = e.traffic_share or 0.0
        elif e.kind == VersionEventKind.promoted:
            self.incumbent[e.model] = e.version
            self.canaries.pop(key, None)
        elif e.kind == VersionEventKind.rolled_back:
            self.canaries.pop(key, None)
            if self.incumbent.get(e.model) == e.version:
                self.incumbent[e.model] = e.parent_version or "base"

    def on_window(self, w: MetricsWindow) -> None:
        if (
            w.window_kind.value == self.cfg.window_kind
            and w.window_size_s == self.cfg.window_size_s
            and w.final
        ):
            self.windows.setdefault((w.model, w.version), []).append(w)

    def totals(self, model: str, version: str, since: datetime) -> Totals:
        t = Totals()
        for w in self.windows.get((model, version), []):
            if w.window_start >= since:
                t.add(w)
        return t

    def evaluate(self) -> list[ModelVersionEvent]:
        out = []
        for (model, version), canary in list(self.canaries.items()):
            incumbent = self.incumbent.get(model, canary.incumbent)
            verdict = judge(
                self.totals(model, version, canary.since),
                self.totals(model, incumbent, canary.since),
                self.cfg,
                canary.share,
            )
            if verdict.kind is None:
                continue
            ramp = verdict.kind == VersionEventKind.ramped
            event = ModelVersionEvent(
                event_id=uuid.uuid5(
                    NAMESPACE,
                    f"{model}|{version}|{verdict.kind.value}" + (f"|{verdict.share}" if ramp else ""),
                ),
                producer=PRODUCER,
                kind=verdict.kind,
                model=model,
                version=version,
                parent_version=incumbent,
                eval=verdict.figures,
                traffic_share=verdict.share
                if ramp
                else (1.0 if verdict.kind == VersionEventKind.promoted else 0.0),
                decision={"promoted": "promote", "ramped": "ramp"}.get(verdict.kind.value, "rollback"),
                reasons=verdict.reasons,
                actor="canary-judge",
            )
            # the event id is derived from the decision, so a retried publish is read once
            self.kafka_retry.call(
                f"publishing {verdict.kind.value} {version}",
                partial(publish_event, self.kafka, self.registry, VERSIONS, event, self.cfg.topic_suffix),
            )
            log.info("%s %s: %s", verdict.kind.value, version, "; ".join(verdict.reasons))
            self.on_version(event)
            self.decisions.append(event)
            out.append(event)
        return out

    def run(self, max_seconds: float | None = None) -> None:
        """Follow both topics from the beginning (state is rebuilt on restart) and decide as windows arrive."""
        c = consumer(self.kafka, f"rftloop-judge-{uuid.uuid4().hex[:8]}")
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        last_eval = 0.0
        try:
            # Decide nothing until both topics are replayed to where they ended at the start: the
            # decisions already taken (manual ones too) and the windows already closed.
            pending = assign_from_start(
                c, [self.versions_topic.name, self.metrics_topic.name], self.kafka_retry
            )
            self.caught_up = not pending
            while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
                for msg in c.consume(500, 0.5):
                    if msg.error():
                        continue
                    where = (msg.topic() or "", msg.partition() or 0)
                    if where in pending and (msg.offset() or 0) + 1 >= pending[where]:
                        del pending[where]
                        self.caught_up = not pending
                    base = VERSIONS.name if msg.topic() == self.versions_topic.name else METRICS.name
                    try:
                        event = self.serde[base].decode_event(msg.value())
                    except SerdeError as exc:
                        log.error("judge: %s offset %s undecodable: %s", msg.topic(), msg.offset(), exc)
                        continue
                    if isinstance(event, ModelVersionEvent):
                        self.on_version(event)
                    elif isinstance(event, MetricsWindow):
                        self.on_window(event)
                if not pending and time.monotonic() - last_eval >= 1.0:
                    last_eval = time.monotonic()
                    self.evaluate()
        except Stopped:
            log.info("judge: stopped while Kafka was failing")
        finally:
            c.close()

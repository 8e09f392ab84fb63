"""What the canary judge knows and decides, without Kafka: the versions' fold, the closed windows
(each once, by event id; bounded), and the decisions to take now.

The judge process (``streams.judge``) feeds it the two topics and publishes what ``decide`` returns;
``rftloop bench judge`` feeds it simulated windows and drives the very same code.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from infra.settings import JudgeSettings
from infra.versions import Canary, VersionFold
from schemas.events import MetricsWindow, ModelVersionEvent, VersionEventKind
from streams.verdict import Totals, Verdict, judge

PRODUCER = "rftloop-judge"
NAMESPACE = uuid.UUID("6f1d6c3e-2a8b-4b7e-9a51-1c0de0f1a003")


Rule = Callable[..., Verdict]


class CanaryBook:
    """``rule``: the decision function (``streams.verdict.judge``; a benchmark passes its peer)."""

    def __init__(self, cfg: JudgeSettings, rule: Rule = judge) -> None:
        self.cfg = cfg
        self.rule = rule
        self.fold = VersionFold()
        # (model, version) -> event id -> window: a re-sent window replaces itself, never adds
        self.windows: dict[tuple[str, str], dict[uuid.UUID, MetricsWindow]] = {}

    def on_version(self, e: ModelVersionEvent) -> None:
        self.fold.apply(e)

    def on_window(self, w: MetricsWindow) -> None:
        if (
            w.window_kind.value == self.cfg.window_kind
            and w.window_size_s == self.cfg.window_size_s
            and w.final
        ):
            self.windows.setdefault((w.model, w.version), {})[w.event_id] = w

    def totals(self, model: str, version: str, since: datetime) -> Totals:
        t = Totals()
        for w in self.windows.get((model, version), {}).values():
            if w.window_start >= since:
                t.add(w)
        return t

    def verdict(self, canary: Canary, now: datetime) -> tuple[str, Verdict]:
        incumbent = self.fold.incumbent(canary.model)
        candidate = self.totals(canary.model, canary.version, canary.since)
        verdict = self.rule(
            candidate,
            self.totals(canary.model, incumbent, canary.since),
            self.cfg,
            canary.share or 0.0,
            (now - canary.since).total_seconds(),
            gated=self.gated(canary.model, canary.version),
        )
        refusals = self.fold.model(canary.model).refusals.get(canary.version, {})
        if verdict.kind == VersionEventKind.rolled_back and not candidate.requests and refusals:
            verdict.reasons += sorted(refusals.values())  # why nobody served it, in the gateways' words
        return incumbent, verdict

    def gated(self, model: str, version: str) -> str | None:
        """The trainer gate's held-out gain the version was published with (``eval`` gain,
        gain_lower, gain_upper), when its lower bound is above 0 and it was measured against the
        incumbent of now (its parent); None otherwise."""
        published = self.fold.model(model).published.get(version)
        if published is None or published.parent_version != self.fold.incumbent(model):
            return None
        figures = published.eval
        if figures.get("gain_lower", 0.0) <= 0 or "gain" not in figures:
            return None
        return (
            f"{figures['gain']:+.3f} [{figures['gain_lower']:+.3f}, {figures.get('gain_upper', figures['gain']):+.3f}]"
        )

    def decide(self, now: datetime) -> list[ModelVersionEvent]:
        """The decisions due now, already applied to the fold (the caller publishes them)."""
        out = []
        for canary in self.fold.canaries():
            incumbent, verdict = self.verdict(canary, now)
            if verdict.kind is None:
                continue
            event = decision_event(canary, incumbent, verdict)
            self.on_version(event)
            out.append(event)
        self.prune(now)
        return out

    def prune(self, now: datetime) -> None:
        """Drop windows no live canary can need: older than every canary's start and than
        ``keep_windows_s`` (windows arrive late, up to the streams' lateness)."""
        horizon = now - timedelta(seconds=self.cfg.keep_windows_s)
        starts = [c.since for c in self.fold.canaries()]
        oldest = min([*starts, horizon])
        for key, by_id in list(self.windows.items()):
            for wid in [wid for wid, w in by_id.items() if w.window_start < oldest]:
                del by_id[wid]
            if not by_id:
                del self.windows[key]


def decision_event(canary: Canary, incumbent: str, verdict: Verdict) -> ModelVersionEvent:
    """The ModelVersionEvent of a verdict; its id is derived from the decision, so a decision
    taken again after a restart (or a retried publish) is one event for every reader."""
    assert verdict.kind is not None
    ramp = verdict.kind == VersionEventKind.ramped
    share = verdict.share if ramp else (1.0 if verdict.kind == VersionEventKind.promoted else 0.0)
    return ModelVersionEvent(
        event_id=uuid.uuid5(
            NAMESPACE,
            f"{canary.model}|{canary.version}|{verdict.kind.value}" + (f"|{verdict.share}" if ramp else ""),
        ),
        producer=PRODUCER,
        kind=verdict.kind,
        model=canary.model,
        version=canary.version,
        parent_version=incumbent,
        eval=verdict.figures,
        traffic_share=share,
        decision={"promoted": "promote", "ramped": "ramp"}.get(verdict.kind.value, "rollback"),
        reasons=verdict.reasons,
        actor="canary-judge",
    )

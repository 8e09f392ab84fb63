"""Rolling windows per (model, version): specs, a mergeable accumulator, roll-up (pure logic).

Two stages make windows cheap and exact across workers:

1. every worker folds the events of its partitions into *buckets* of the base
   width (the gcd of all window sizes and steps, 10 s by default) per
   (model, version) and publishes each bucket's partial ``Accumulator``;
2. partials are keyed by ``model|version``, so one owner merges them into every
   window containing the bucket (tumbling 10 s and 1 min, hopping 5 min every
   1 min by default) and emits a MetricsWindow when the window closes.

Accumulators only add counts, sums and DDSketch buckets, so merging partials in
any order and grouping gives the same figures as one pass over the raw events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from schemas.events import MetricsWindow, WindowKind
from streams.sketch import DDSketch


class WindowSpecError(ValueError):
    """A window definition that cannot be parsed or rolled up from the base buckets."""


@dataclass(frozen=True)
class WindowSpec:
    kind: WindowKind
    size_s: int
    step_s: int

    @property
    def name(self) -> str:
        return f"{self.kind.value}:{self.size_s}" + (
            f":{self.step_s}" if self.kind == WindowKind.hopping else ""
        )

    def starts_containing(self, t: int) -> list[int]:
        """Start times (epoch s) of this spec's windows that contain second ``t``."""
        last = t // self.step_s * self.step_s
        first = last - (self.size_s - self.step_s)
        return list(range(max(first, 0), last + 1, self.step_s))


def parse_windows(text: str) -> list[WindowSpec]:
    """``tumbling:10,tumbling:60,hopping:300:60`` -> specs (sizes and steps in seconds)."""
    specs = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        parts = item.split(":")
        try:
            kind = WindowKind(parts[0])
            size = int(parts[1])
            step = int(parts[2]) if kind == WindowKind.hopping else size
        except (ValueError, IndexError):
            raise WindowSpecError(
                f"window {item!r}: expected tumbling:SIZE or hopping:SIZE:STEP in seconds, "
                "e.g. RFTLOOP_STREAMS_WINDOWS=tumbling:10,tumbling:60,hopping:300:60"
            ) from None
        if (kind == WindowKind.tumbling and len(parts) != 2) or (
            kind == WindowKind.hopping and len(parts) != 3
        ):
            raise WindowSpecError(f"window {item!r}: tumbling takes SIZE, hopping takes SIZE:STEP")
        if size <= 0 or step <= 0 or step > size or size % step:
            raise WindowSpecError(f"window {item!r}: need 0 < STEP <= SIZE and SIZE a multiple of STEP")
        specs.append(WindowSpec(kind, size, step))
    if not specs:
        raise WindowSpecError("RFTLOOP_STREAMS_WINDOWS is empty: name at least one window")
    return specs


def base_bucket_s(specs: list[WindowSpec]) -> int:
    return math.gcd(*(n for s in specs for n in (s.size_s, s.step_s)))


@dataclass
class Accumulator:
    requests: int = 0
    errors: int = 0
    latency: DDSketch = field(default_factory=DDSketch)
    ttft: DDSketch = field(default_factory=DDSketch)
    tps_sum: float = 0.0
    tps_n: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)
    reward_sum: float = 0.0
    reward_n: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0
    user_feedback: int = 0

    def add_completed(self, r: dict[str, Any]) -> None:
        """One decoded InferenceCompleted record (the raw Avro dict: the hot path skips pydantic)."""
        self.requests += 1
        if r["status"] != "ok":
            self.errors += 1
        else:
            self.latency.add(r["latency_ms"])
            ttft = r["ttft_ms"]
            if ttft is not None:
                self.ttft.add(ttft)
            tps = r["tokens_per_s"]
            if tps is not None:
                self.tps_sum += tps
                self.tps_n += 1
        self.prompt_tokens += r["prompt_tokens"]
        self.completion_tokens += r["completion_tokens"]
        self.cost += r["cost"]

    def add_feedback(self, reward: float | None, kind: str, value: float | None, from_user: bool) -> None:
        if reward is not None:
            self.reward_sum += reward
            self.reward_n += 1
        if kind == "thumbs" and value is not None:
            if value > 0:
                self.thumbs_up += 1
            else:
                self.thumbs_down += 1
        if from_user:
            self.user_feedback += 1

    def merge(self, o: Accumulator) -> None:
        self.requests += o.requests
        self.errors += o.errors
        self.latency.merge(o.latency)
        self.ttft.merge(o.ttft)
        self.tps_sum += o.tps_sum
        self.tps_n += o.tps_n
        self.prompt_tokens += o.prompt_tokens
        self.completion_tokens += o.completion_tokens
        self.cost += o.cost
        self.reward_sum += o.reward_sum
        self.reward_n += o.reward_n
        self.thumbs_up += o.thumbs_up
        self.thumbs_down += o.thumbs_down
        self.user_feedback += o.user_feedback

    def to_json(self) -> dict[str, Any]:
        return {
            "rq": self.requests,
            "er": self.errors,
            "lat": self.latency.to_json(),
            "tt": self.ttft.to_json(),
            "tps": [self.tps_sum, self.tps_n],
            "tok": [self.prompt_tokens, self.completion_tokens],
            "cost": str(self.cost),
            "rw": [self.reward_sum, self.reward_n],
            "th": [self.thumbs_up, self.thumbs_down],
            "uf": self.user_feedback,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Accumulator:
        return cls(
            requests=d["rq"],
            errors=d["er"],
            latency=DDSketch.from_json(d["lat"]),
            ttft=DDSketch.from_json(d["tt"]),
            tps_sum=d["tps"][0],
            tps_n=d["tps"][1],
            prompt_tokens=d["tok"][0],
            completion_tokens=d["tok"][1],
            cost=Decimal(d["cost"]),
            reward_sum=d["rw"][0],
            reward_n=d["rw"][1],
            thumbs_up=d["th"][0],
            thumbs_down=d["th"][1],
            user_feedback=d["uf"],
        )

    def to_event(
        self,
        *,
        event_id: Any,
        producer: str,
        model: str,
        version: str,
        spec: WindowSpec,
        start_s: int,
        final: bool,
    ) -> MetricsWindow:
        n = self.requests
        tokens = self.prompt_tokens + self.completion_tokens
        votes = self.thumbs_up + self.thumbs_down
        cost = self.cost.quantize(Decimal("0.000000001"))
        return MetricsWindow(
            event_id=event_id,
            producer=producer,
            model=model,
            version=version,
            window_start=datetime.fromtimestamp(start_s, UTC),
            window_end=datetime.fromtimestamp(start_s + spec.size_s, UTC),
            window_size_s=spec.size_s,
            window_kind=spec.kind,
            final=final,
            requests=n,
            errors=self.errors,
            error_rate=self.errors / n if n else 0.0,
            latency_p50_ms=self.latency.quantile(0.5),
            latency_p95_ms=self.latency.quantile(0.95),
            latency_p99_ms=self.latency.quantile(0.99),
            ttft_p50_ms=self.ttft.quantile(0.5),
            ttft_p95_ms=self.ttft.quantile(0.95),
            ttft_p99_ms=self.ttft.quantile(0.99),
            tokens_per_s=self.tps_sum / self.tps_n if self.tps_n else None,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost_total=cost,
            cost_per_request=float(self.cost) / n if n else None,
            cost_per_1k_tokens=float(self.cost) * 1000 / tokens if tokens else None,
            reward_count=self.reward_n,
            reward_mean=self.reward_sum / self.reward_n if self.reward_n else None,
            thumbs_up=self.thumbs_up,
            thumbs_down=self.thumbs_down,
            thumbs_up_rate=self.thumbs_up / votes if votes else None,
            feedback_coverage=self.user_feedback / n if n else None,
            latency_sketch=self.latency.to_bytes() if self.latency.count else None,
        )


@dataclass
class VersionWindows:
    """Stage 2 state of one ``model|version``: open windows, what closed, last partial merged."""

    model: str
    version: str
    open: dict[str, dict[str, Any]] = field(default_factory=dict)  # "spec|start" -> accumulator json
    closed_until: dict[str, int] = field(default_factory=dict)  # spec name -> end of last closed window
    last_offset: int = -1
    late_partials: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "m": self.model,
            "v": self.version,
            "o": self.open,
            "c": self.closed_until,
            "off": self.last_offset,
            "late": self.late_partials,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VersionWindows:
        return cls(d["m"], d["v"], d["o"], d["c"], d["off"], d["late"])

    def add_partial(self, specs: list[WindowSpec], bucket_s: int, partial: Accumulator) -> None:
        for spec in specs:
            for start in spec.starts_containing(bucket_s):
                if start + spec.size_s <= self.closed_until.get(spec.name, 0):
                    self.late_partials += 1
                    continue
                key = f"{spec.name}|{start}"
                current = self.open.get(key)
                if current is None:
                    acc = Accumulator()
                    acc.merge(partial)
                else:
                    acc = Accumulator.from_json(current)
                    acc.merge(partial)
                self.open[key] = acc.to_json()

    def due(self, specs: list[WindowSpec], now_s: float, lateness_s: float) -> list[tuple[WindowSpec, int]]:
        """Open windows whose end + lateness has passed, oldest first."""
        by_name = {s.name: s for s in specs}
        out = []
        for key in self.open:
            name, start = key.rsplit("|", 1)
            spec = by_name.get(name)
            if spec is not None and int(start) + spec.size_s + lateness_s <= now_s:
                out.append((spec, int(start)))
        return sorted(out, key=lambda x: (x[1], x[0].size_s))

    def close(self, spec: WindowSpec, start: int) -> Accumulator:
        acc = Accumulator.from_json(self.open.pop(f"{spec.name}|{start}"))
        end = start + spec.size_s
        self.closed_until[spec.name] = max(self.closed_until.get(spec.name, 0), end)
        return acc

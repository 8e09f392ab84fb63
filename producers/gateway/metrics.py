"""The gateway's Prometheus metrics, with ``prometheus_client``: requests, tokens, latency and TTFT
histograms per version, event-sender health and traffic shares.

One ``CollectorRegistry`` per gateway (not the process-global one), so two gateways in one process
(tests) never collide; the sender's and router's live figures are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16)


class _Live(Collector):
    def __init__(self, events: Callable[[], dict[str, Any]], weights: Callable[[], dict[str, float]]) -> None:
        self._events, self._weights = events, weights

    def collect(self) -> Iterator[Any]:
        h = self._events()
        yield GaugeMetricFamily(
            "rftloop_gateway_events_waiting", "events queued for Kafka", value=h["waiting"]
        )
        yield CounterMetricFamily(
            "rftloop_gateway_events_dropped", "events dropped (buffer full)", value=h["dropped"]
        )
        yield CounterMetricFamily("rftloop_gateway_events_failed", "events Kafka refused", value=h["failed"])
        share = GaugeMetricFamily("rftloop_gateway_traffic_share", "routed traffic share", labels=["version"])
        for version, w in sorted(self._weights().items()):
            share.add_metric([version], w)
        yield share


class Metrics:
    def __init__(self, events: Callable[[], dict[str, Any]], weights: Callable[[], dict[str, float]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "rftloop_gateway_requests", "requests served", ["version", "endpoint", "status"], registry=r
        )
        self.tokens = Counter("rftloop_gateway_tokens", "tokens", ["version", "kind"], registry=r)
        self.latency = Histogram(
            "rftloop_gateway_latency_seconds",
            "request latency",
            ["version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "rftloop_gateway_ttft_seconds",
            "time to first token",
            ["version"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.feedback = Counter("rftloop_gateway_feedback", "feedback posts", ["outcome"], registry=r)
        r.register(_Live(events, weights))

    def served(
        self,
        version: str,
        endpoint: str,
        ok: bool,
        latency_s: float,
        ttft_s: float | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        self.requests.labels(version, endpoint, "ok" if ok else "error").inc()
        self.tokens.labels(version, "prompt").inc(prompt_tokens)
        self.tokens.labels(version, "completion").inc(completion_tokens)
        self.latency.labels(version).observe(latency_s)
        if ttft_s is not None:
            self.ttft.labels(version).observe(ttft_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)

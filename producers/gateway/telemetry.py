"""OpenTelemetry spans and metrics for each request, following the GenAI semantic conventions.

Off unless ``RFTLOOP_GATEWAY_OTLP_ENDPOINT`` names an OTLP/HTTP collector (``http://host:4318``).
Then each request is a SERVER span ``"{operation} {model}"`` (a child of the caller's W3C
``traceparent`` when it sent one) with ``gen_ai.operation.name``, ``gen_ai.provider.name``,
``gen_ai.request.model`` / ``.max_tokens`` / ``.temperature`` / ``.top_p`` / ``.choice.count``,
``gen_ai.response.model`` / ``.id`` / ``.finish_reasons`` and ``gen_ai.usage.input_tokens`` /
``output_tokens``; and the GenAI server metrics ``gen_ai.server.request.duration``,
``gen_ai.server.time_to_first_token``, ``gen_ai.server.time_per_output_token`` and
``gen_ai.client.token.usage`` are exported every ``RFTLOOP_GATEWAY_OTLP_METRICS_INTERVAL_S``.
Attribute and metric names come from ``opentelemetry-semantic-conventions``, not typed by hand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as ga
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics as gm

from infra.settings import GatewaySettings

PROVIDER = "vllm"


@dataclass
class Asked:
    operation: str  # "chat" or "text_completion"
    model: str
    max_tokens: int
    temperature: float
    top_p: float
    n: int


class Telemetry:
    def __init__(self, settings: GatewaySettings, service: str) -> None:
        self.enabled = bool(settings.otlp_endpoint)
        if not self.enabled:
            return
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        base = settings.otlp_endpoint.rstrip("/")
        resource = Resource.create({"service.name": "rftloop-gateway", "service.instance.id": service})
        self._traces = TracerProvider(resource=resource)
        self._traces.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces")))
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{base}/v1/metrics"),
            export_interval_millis=settings.otlp_metrics_interval_s * 1000,
        )
        self._meters = MeterProvider(resource=resource, metric_readers=[reader])
        self.tracer = self._traces.get_tracer("rftloop.gateway")
        meter = self._meters.get_meter("rftloop.gateway")
        self.duration = gm.create_gen_ai_server_request_duration(meter)
        self.ttft = gm.create_gen_ai_server_time_to_first_token(meter)
        self.per_token = gm.create_gen_ai_server_time_per_output_token(meter)
        self.tokens = gm.create_gen_ai_client_token_usage(meter)
        self.propagator = TraceContextTextMapPropagator()

    def start(self, asked: Asked, traceparent: str | None) -> Any:
        """A span for one request (None when telemetry is off)."""
        if not self.enabled:
            return None
        from opentelemetry.trace import SpanKind

        parent = self.propagator.extract({"traceparent": traceparent}) if traceparent else None
        return self.tracer.start_span(
            f"{asked.operation} {asked.model}",
            context=parent,
            kind=SpanKind.SERVER,
            start_time=time.time_ns(),
            attributes={
                ga.GEN_AI_OPERATION_NAME: asked.operation,
                ga.GEN_AI_PROVIDER_NAME: PROVIDER,
                ga.GEN_AI_REQUEST_MODEL: asked.model,
                ga.GEN_AI_REQUEST_MAX_TOKENS: asked.max_tokens,
                ga.GEN_AI_REQUEST_TEMPERATURE: asked.temperature,
                ga.GEN_AI_REQUEST_TOP_P: asked.top_p,
                ga.GEN_AI_REQUEST_CHOICE_COUNT: asked.n,
            },
        )

    def finish(
        self,
        span: Any,
        asked: Asked,
        *,
        response_model: str,
        response_id: str,
        finish_reason: str | None,
        input_tokens: int,
        output_tokens: int,
        seconds: float,
        ttft_s: float | None,
        error: str | None,
    ) -> None:
        if not self.enabled or span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        span.set_attributes(
            {
                ga.GEN_AI_RESPONSE_MODEL: response_model,
                ga.GEN_AI_RESPONSE_ID: response_id,
                ga.GEN_AI_RESPONSE_FINISH_REASONS: [finish_reason] if finish_reason else [],
                ga.GEN_AI_USAGE_INPUT_TOKENS: input_tokens,
                ga.GEN_AI_USAGE_OUTPUT_TOKENS: output_tokens,
            }
        )
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
            span.set_attribute("error.type", error.split(":", 1)[0])
        span.end()
        attrs = {
            ga.GEN_AI_OPERATION_NAME: asked.operation,
            ga.GEN_AI_PROVIDER_NAME: PROVIDER,
            ga.GEN_AI_REQUEST_MODEL: asked.model,
            ga.GEN_AI_RESPONSE_MODEL: response_model,
        }
        self.duration.record(seconds, attrs | ({"error.type": "engine"} if error else {}))
        if ttft_s is not None:
            self.ttft.record(ttft_s, attrs)
            if output_tokens > 1:
                self.per_token.record((seconds - ttft_s) / (output_tokens - 1), attrs)
        self.tokens.record(input_tokens, attrs | {ga.GEN_AI_TOKEN_TYPE: "input"})
        self.tokens.record(output_tokens, attrs | {ga.GEN_AI_TOKEN_TYPE: "output"})

    def refused(self, span: Any, status: int, message: str) -> None:
        """End the span of a request vLLM refused (4xx): an error span, no GenAI metrics."""
        if not self.enabled or span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR, message[:200]))
        span.end()

    def close(self) -> None:
        if self.enabled:
            self._traces.shutdown()
            self._meters.shutdown()

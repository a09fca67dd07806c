"""Tracer providers built from config, and W3C trace-context propagation through plain dicts.

No endpoint configured means the no-op tracer: spans cost nothing and nothing is exported. Providers are passed
to the code that uses them; nothing here sets a process-wide global.
"""

from __future__ import annotations

from typing import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gemma_serving.config import TelemetrySettings

_PROPAGATOR = TraceContextTextMapPropagator()


def build_tracer_provider(settings: TelemetrySettings, component: str) -> trace.TracerProvider:
    """An SDK provider exporting over OTLP/gRPC to `settings.otlp_endpoint`, or the no-op provider if unset."""
    if not settings.otlp_endpoint:
        return trace.NoOpTracerProvider()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    endpoint = settings.otlp_endpoint
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name, "gemma_serving.component": component}),
        sampler=ParentBased(TraceIdRatioBased(settings.sampling_ratio)),
    )
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=settings.export_delay_ms))
    return provider


def extract(carrier: Mapping[str, str]) -> Context:
    """The trace context in `carrier` (traceparent/tracestate keys), or an empty context."""
    return _PROPAGATOR.extract(carrier=dict(carrier))


def inject(context: Context | None = None) -> dict[str, str]:
    """traceparent/tracestate for the current span (or `context`), to send across a process boundary."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier

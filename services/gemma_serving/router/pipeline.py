"""What every surface (gRPC, OpenAI-compatible HTTP) does with a request.

Authenticate, validate, admit (permissions, quotas, fair share, safety), set the deadline, continue the client's
trace, route to the service, stream chunks back (charging tokens as they stream), and record metrics, the router span
and one structured log line. Surfaces only convert their wire format to and from the domain types.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import AsyncIterator, Mapping

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from gemma_serving.config import ServingConfig
from gemma_serving.engines.sampling import SAMPLING_PARAMS
from gemma_serving.engines.types import Chunk, GenerationRequest
from gemma_serving.errors import DeadlineExceeded, GemmaServingError
from gemma_serving.router.adapters import AdapterCatalog
from gemma_serving.router.auth import Credentials
from gemma_serving.router.backends import Backend
from gemma_serving.router.tenancy import Tenancy
from gemma_serving.router.tool_streaming import stream_with_tool_calls
from gemma_serving.router.validation import validate_request
from gemma_serving.security_config import TenantConfig
from gemma_serving.telemetry import attributes as attr
from gemma_serving.telemetry.logs import configure_request_logging, prompt_hash
from gemma_serving.telemetry.metrics import RouterMetrics
from gemma_serving.telemetry.tracing import extract, inject


@dataclasses.dataclass
class _Progress:
    """What happened to one request, for metrics, the span and the log line."""

    received: float
    service: str = "none"
    model: str = "unknown"
    tenant: str = "unknown"
    code: str = "OK"
    first_at: float | None = None
    previous_at: float | None = None
    last: Chunk | None = None
    waiting: bool = False
    charged: int = 0
    itl: object = None  # the labelled histogram, looked up once per request, not per chunk
    queue_s: float | None = None


class InferencePipeline:
    """Authentication, validation, admission, routing, deadlines, tracing, metrics and logs around a Backend."""

    def __init__(self, config: ServingConfig, backend: Backend, *, tracer: trace.Tracer, metrics: RouterMetrics,
                 tenancy: Tenancy | None = None, adapters: AdapterCatalog | None = None) -> None:
        self._config = config
        self._backend = backend
        self._tracer = tracer
        self._metrics = metrics
        self.tenancy = tenancy or Tenancy(config)
        self.adapters = adapters or AdapterCatalog(config)  # configured + registered LoRA adapters
        self._models = {s.model.name for s in config.services.values()}
        self._log = configure_request_logging()

    def authenticate(self, credentials: Credentials) -> TenantConfig:
        """The caller's tenant (for the gRPC interceptor and the HTTP middleware); a refused caller is counted in
        gemma_serving_requests_total like any finished request (service none, tenant unknown)."""
        try:
            return self.tenancy.authenticate(credentials)
        except GemmaServingError as exc:
            self._metrics.requests.labels("none", "unknown", "unknown", exc.grpc_code).inc()
            raise

    async def stream(
        self,
        request: GenerationRequest,
        *,
        request_id: str,
        time_remaining: float | None,
        carrier: Mapping[str, str],
        credentials: Credentials = Credentials(),
        tenant: TenantConfig | None = None,
    ) -> AsyncIterator[Chunk]:
        """Stream chunks for `request`; raises GemmaServingError subclasses for every expected failure. `tenant`:
        the caller, when the surface authenticated it already (the gRPC interceptor, the HTTP middleware)."""
        p = _Progress(received=time.monotonic(), model=request.model if request.model in self._models else "unknown")
        span = self._tracer.start_span(
            attr.SPAN_ROUTER, context=extract(carrier), kind=SpanKind.SERVER,
            attributes={attr.OPERATION: attr.OPERATION_CHAT, attr.PROVIDER: attr.PROVIDER_NAME,
                        attr.REQUEST_MODEL: p.model, attr.RESPONSE_ID: request_id},
        )
        admitted = False
        try:
            tenant = tenant or self.tenancy.authenticate(credentials)
            p.tenant = tenant.id
            span.set_attribute(attr.TENANT, tenant.id)
            kind, request = validate_request(request, self._config, self.adapters)
            p.service = kind.value
            self.tenancy.admit(tenant, request, p.service)
            admitted = True
            request = self._prepare(request, span, time_remaining)
            span.set_attribute(attr.SERVICE, p.service)
            self._metrics.in_flight.labels(p.service).inc()
            self._metrics.waiting.labels(p.service).inc()
            p.waiting = True
            stream = self._backend.stream(kind, request, request_id)
            if request.tools and request.tool_choice.mode != "none":
                stream = stream_with_tool_calls(stream, request.tools)
            try:
                text = ""
                async for chunk in stream:
                    self._observe(p, chunk, tenant)
                    if self.tenancy.checks_output:
                        text += chunk.text
                        self.tenancy.policy.check_output(text)
                    yield chunk
            finally:
                await stream.aclose()
        except (asyncio.CancelledError, GeneratorExit):
            p.code = "CANCELLED"
            raise
        except GemmaServingError as exc:
            p.code = exc.grpc_code
            raise
        except Exception:
            p.code = "INTERNAL"
            raise
        finally:
            if admitted:
                self.tenancy.release(tenant, p.service)
            self._finish(span, p, request_id, request)

    def _prepare(self, request: GenerationRequest, span, time_remaining: float | None) -> GenerationRequest:
        budget = self._config.router.max_request_seconds
        if time_remaining is not None:  # 0.0 is a deadline that has passed, not "no deadline"
            if time_remaining <= 0:
                raise DeadlineExceeded("the request's deadline had passed when it arrived")
            budget = min(budget, time_remaining)
        _set_request_attributes(span, request)
        return dataclasses.replace(
            request,
            # The remaining time travels with the request as a duration; the backend enforces it over the whole
            # stream and cancels the replica call (which aborts the engine request) when it runs out.
            budget_s=budget,
            trace_context=inject(trace.set_span_in_context(span)),
        )

    def _observe(self, p: _Progress, chunk: Chunk, tenant: TenantConfig) -> None:
        m, at = self._metrics, time.monotonic()
        if p.first_at is None:
            p.first_at, p.waiting = at, False
            m.waiting.labels(p.service).dec()
            m.ttft.labels(p.service, p.model, p.tenant).observe(at - p.received)
            if chunk.queue_seconds is not None:
                p.queue_s = max(chunk.queue_seconds, 0.0)
                m.queue.labels(p.service, p.model).observe(p.queue_s)
            p.itl = m.itl.labels(p.service, p.model)
        elif chunk.completion_tokens > p.last.completion_tokens:
            # One observation per chunk, averaged over its tokens: no per-token Python work.
            p.itl.observe((at - p.previous_at) / (chunk.completion_tokens - p.last.completion_tokens))
        used = chunk.prompt_tokens + chunk.completion_tokens
        self.tenancy.quotas.charge(tenant, used - p.charged)  # tokens are charged as they stream
        p.charged, p.previous_at, p.last = used, at, chunk

    def _finish(self, span, p: _Progress, request_id: str, request: GenerationRequest) -> None:
        m = self._metrics
        if p.waiting or p.first_at is not None:
            m.in_flight.labels(p.service).dec()
            if p.waiting:
                m.waiting.labels(p.service).dec()
        m.requests.labels(p.service, p.model, p.tenant, p.code).inc()
        latency = time.monotonic() - p.received
        m.duration.labels(p.service, p.model, p.tenant, p.code).observe(latency)
        span.set_attribute(attr.STATUS_CODE, p.code)
        last = p.last
        if p.first_at is not None:
            span.set_attribute(attr.TIME_TO_FIRST_TOKEN_S, p.first_at - p.received)
        if p.queue_s is not None:  # measured by the router (less the replica's own time): no clocks compared
            span.set_attribute(attr.QUEUE_TIME_S, p.queue_s)
        if last is not None:
            m.prompt_tokens.labels(p.service, p.model, p.tenant).inc(last.prompt_tokens)
            m.completion_tokens.labels(p.service, p.model, p.tenant).inc(last.completion_tokens)
            span.set_attribute(attr.USAGE_INPUT_TOKENS, last.prompt_tokens)
            span.set_attribute(attr.USAGE_OUTPUT_TOKENS, last.completion_tokens)
            if last.finish_reason is not None:
                span.set_attribute(attr.RESPONSE_FINISH_REASONS, [last.finish_reason.value])
        if p.code not in ("OK", "CANCELLED"):
            span.set_status(Status(StatusCode.ERROR, p.code))
        span.end()
        self._log.info("request finished", extra={"fields": {
            "request_id": request_id, "tenant": p.tenant, "model": p.model, "service": p.service, "status": p.code,
            "prompt_tokens": last.prompt_tokens if last else 0,
            "completion_tokens": last.completion_tokens if last else 0,
            "latency_ms": round(latency * 1000, 1), "prompt_sha": prompt_hash(request),
        }})


async def collect(stream: AsyncIterator[Chunk]) -> tuple[str, Chunk]:
    """The whole text of a stream and its last chunk (finish reason, usage, tool calls; with logprobs, those of
    every chunk), for unary answers."""
    texts, logprobs, last = [], [], None
    async for chunk in stream:
        texts.append(chunk.text)
        logprobs.extend(chunk.logprobs)
        last = chunk
    if last is None:
        raise GemmaServingError("the engine returned no output")
    if logprobs:
        last = dataclasses.replace(last, logprobs=tuple(logprobs))
    return "".join(texts), last


def _set_request_attributes(span, request: GenerationRequest) -> None:
    span.set_attribute(attr.INPUT_MODALITIES, sorted(request.modalities()))
    for p in SAMPLING_PARAMS:  # every set sampling parameter, under its declared attribute key
        value = getattr(request.sampling, p.name)
        if value is not None:
            span.set_attribute(p.span_key(), list(value) if isinstance(value, tuple) else value)

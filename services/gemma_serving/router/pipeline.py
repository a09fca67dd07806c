"""What every surface (gRPC now, OpenAI-compatible HTTP later) does with a request.

Validate, set the deadline, continue the client's trace, route to the service, stream chunks back, and record
metrics and the router span. Surfaces only convert their wire format to and from the domain types.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from typing import AsyncIterator, Mapping

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from gemma_serving.config import ServingConfig
from gemma_serving.engines.tool_calls import parse_tool_calls
from gemma_serving.engines.types import Chunk, FinishReason, GenerationRequest, Tool
from gemma_serving.errors import GemmaServingError
from gemma_serving.router.backends import Backend
from gemma_serving.router.validation import validate_request
from gemma_serving.telemetry import attributes as attr
from gemma_serving.telemetry.metrics import RouterMetrics
from gemma_serving.telemetry.tracing import extract, inject

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"


def prompt_digest(request: GenerationRequest) -> str:
    """A short hash of the prompt text, for logs: prompt text itself is never logged."""
    h = hashlib.sha256()
    for m in request.messages:
        for p in m.parts:
            h.update(getattr(p, "text", "").encode())
    return h.hexdigest()[:12]


class InferencePipeline:
    """Validation, routing, deadlines, tracing and metrics around a Backend."""

    def __init__(
        self, config: ServingConfig, backend: Backend, *, tracer: trace.Tracer, metrics: RouterMetrics
    ) -> None:
        self._config = config
        self._backend = backend
        self._tracer = tracer
        self._metrics = metrics
        self._models = {s.model.name for s in config.services.values()}

    async def stream(
        self,
        request: GenerationRequest,
        *,
        request_id: str,
        time_remaining: float | None,
        carrier: Mapping[str, str],
        tenant: str = DEFAULT_TENANT,
    ) -> AsyncIterator[Chunk]:
        """Stream chunks for `request`; raises GemmaServingError subclasses for every expected failure."""
        received = time.monotonic()
        model = request.model if request.model in self._models else "unknown"
        span = self._tracer.start_span(
            attr.SPAN_ROUTER,
            context=extract(carrier),
            kind=SpanKind.SERVER,
            attributes={attr.OPERATION: attr.OPERATION_CHAT, attr.PROVIDER: attr.PROVIDER_NAME,
                        attr.REQUEST_MODEL: model, attr.RESPONSE_ID: request_id, attr.TENANT: tenant},
        )
        service, code, first_at, previous_at, last = "none", "OK", None, None, None
        waiting = False
        try:
            kind, request = validate_request(request, self._config)
            service = kind.value
            budget = self._config.router.max_request_seconds
            now = time.time()
            request = dataclasses.replace(
                request,
                # The deadline travels with the request; the deployment aborts the engine request when it passes.
                deadline=now + min(budget, time_remaining or budget),
                trace_context=inject(trace.set_span_in_context(span)),
                sent_at=now,
            )
            _set_request_attributes(span, request, service)
            log.info("request %s tenant=%s model=%s service=%s prompt=%s", request_id, tenant, model, service,
                     prompt_digest(request))
            self._metrics.in_flight.labels(service).inc()
            self._metrics.waiting.labels(service).inc()
            waiting = True
            stream = self._backend.stream(kind, request, request_id)
            if request.tools and request.tool_choice.mode != "none":
                stream = with_tool_calls(stream, request.tools)
            try:
                async for chunk in stream:
                    at = time.monotonic()
                    if first_at is None:
                        first_at = at
                        waiting = False
                        self._metrics.waiting.labels(service).dec()
                        self._metrics.ttft.labels(service, model, tenant).observe(at - received)
                        if chunk.queue_seconds is not None:
                            self._metrics.queue.labels(service, model).observe(max(chunk.queue_seconds, 0.0))
                    elif last is not None and chunk.completion_tokens > last.completion_tokens:
                        # One observation per chunk, averaged over its tokens: no per-token Python work.
                        gap = (at - previous_at) / (chunk.completion_tokens - last.completion_tokens)
                        self._metrics.itl.labels(service, model).observe(gap)
                    previous_at, last = at, chunk
                    yield chunk
            finally:
                await stream.aclose()
        except (asyncio.CancelledError, GeneratorExit):
            code = "CANCELLED"
            raise
        except GemmaServingError as exc:
            code = exc.grpc_code
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            self._finish(span, service, model, tenant, code, received, first_at, last, waiting)

    def _finish(self, span, service, model, tenant, code, received, first_at, last, waiting) -> None:
        m = self._metrics
        if service != "none":
            m.in_flight.labels(service).dec()
            if waiting:
                m.waiting.labels(service).dec()
        m.requests.labels(service, model, tenant, code).inc()
        m.duration.labels(service, model, tenant, code).observe(time.monotonic() - received)
        span.set_attribute(attr.STATUS_CODE, code)
        if first_at is not None:
            span.set_attribute(attr.TIME_TO_FIRST_TOKEN_S, first_at - received)
        if last is not None:
            m.prompt_tokens.labels(service, model, tenant).inc(last.prompt_tokens)
            m.completion_tokens.labels(service, model, tenant).inc(last.completion_tokens)
            span.set_attribute(attr.USAGE_INPUT_TOKENS, last.prompt_tokens)
            span.set_attribute(attr.USAGE_OUTPUT_TOKENS, last.completion_tokens)
            if last.finish_reason is not None:
                span.set_attribute(attr.RESPONSE_FINISH_REASONS, [last.finish_reason.value])
        if code not in ("OK", "CANCELLED"):
            span.set_status(Status(StatusCode.ERROR, code))
        span.end()


async def with_tool_calls(stream: AsyncIterator[Chunk], tools: tuple[Tool, ...]) -> AsyncIterator[Chunk]:
    """Buffer a reply to a request that offered tools: one chunk with the parsed tool calls, or with the text.

    A call is only known once the reply is complete, so tool requests do not stream token by token.
    """
    texts, last = [], None
    try:
        async for chunk in stream:
            texts.append(chunk.text)
            last = chunk
    finally:
        await stream.aclose()
    if last is None:
        return
    text = "".join(texts)
    calls = parse_tool_calls(text, tools)
    if calls:
        yield dataclasses.replace(last, text="", tool_calls=calls, finish_reason=FinishReason.TOOL_CALLS)
    else:
        yield dataclasses.replace(last, text=text)


def _set_request_attributes(span, request: GenerationRequest, service: str) -> None:
    s = request.sampling
    span.set_attribute(attr.SERVICE, service)
    span.set_attribute(attr.REQUEST_MAX_TOKENS, s.max_tokens)
    span.set_attribute(attr.INPUT_MODALITIES, sorted(request.modalities()))
    if s.temperature is not None:
        span.set_attribute(attr.REQUEST_TEMPERATURE, s.temperature)
    if s.top_p is not None:
        span.set_attribute(attr.REQUEST_TOP_P, s.top_p)

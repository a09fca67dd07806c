"""The engine span: wraps an engine's chunk stream, measured right at the engine (engines know nothing of tracing)."""

from __future__ import annotations

import time
from typing import AsyncIterator

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from gemma_serving.engines.types import Chunk
from gemma_serving.telemetry import attributes as attr


async def traced_engine_stream(
    tracer: trace.Tracer, parent: Span, stream: AsyncIterator[Chunk], *, model: str, request_id: str
) -> AsyncIterator[Chunk]:
    """Yield `stream`'s chunks inside a child span of `parent` recording time to first token, usage and finish."""
    span = tracer.start_span(
        attr.SPAN_ENGINE,
        context=trace.set_span_in_context(parent),
        attributes={attr.REQUEST_MODEL: model, attr.RESPONSE_ID: request_id},
    )
    began = time.monotonic()
    last: Chunk | None = None
    try:
        async for chunk in stream:
            if last is None:
                span.set_attribute(attr.TIME_TO_FIRST_TOKEN_S, time.monotonic() - began)
            last = chunk
            yield chunk
    except Exception as exc:
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        await stream.aclose()
        if last is not None:
            span.set_attribute(attr.USAGE_INPUT_TOKENS, last.prompt_tokens)
            span.set_attribute(attr.USAGE_OUTPUT_TOKENS, last.completion_tokens)
            reason = last.finish_reason.value if last.finish_reason else "abort"
            span.set_attribute(attr.RESPONSE_FINISH_REASONS, [reason])
        span.end()

"""ModalityDeployment: the thin Ray Serve shell around one engine, bound three times (text, vision, audio).

It decodes media for its modality, streams engine chunks back (coalesced), and exposes the engine's health to Serve.
It never parses protobuf and knows nothing of tenants.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path
from typing import AsyncIterator, Callable

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from gemma_serving.config import SERVICE_MODALITIES, ModelConfig, ServiceConfig, ServiceKind, TelemetrySettings
from gemma_serving.deployments.streaming import coalesce
from gemma_serving.engines.base import Engine
from gemma_serving.engines.types import (
    AudioPart,
    Chunk,
    DecodedAudio,
    DecodedImage,
    GenerationRequest,
    ImagePart,
    Message,
)
from gemma_serving.errors import InvalidRequest
from gemma_serving.media import decode_audio, decode_image
from gemma_serving.telemetry import attributes as attr
from gemma_serving.telemetry.engine_span import traced_engine_stream
from gemma_serving.telemetry.tracing import build_tracer_provider, extract, inject

log = logging.getLogger(__name__)

EngineFactory = Callable[[ServiceKind, ModelConfig, Path], Engine]


def vllm_engine_factory(kind: ServiceKind, model: ModelConfig, path: Path) -> Engine:
    """The production engine: vLLM over the model checkpoint at `path`."""
    from gemma_serving.engines.vllm import VllmEngine

    return VllmEngine(model, path, accepts=SERVICE_MODALITIES[kind])


def resolve_checkpoint(source: str) -> Path:
    """A local checkpoint directory for `source` (building the tiny test models on first use)."""
    from gemma_serving.models import resolve_model_source

    return resolve_model_source(source, progress=lambda msg: log.info("model build: %s", msg))


def decode_media(request: GenerationRequest, accepts: tuple[str, ...]) -> GenerationRequest:
    """Replace encoded image/audio parts by decoded ones; reject modalities this service does not take."""
    unsupported = request.modalities() - set(accepts)
    if unsupported:
        raise InvalidRequest(
            f"model {request.model} does not accept {', '.join(sorted(unsupported))} input; it accepts "
            f"{', '.join(accepts)}"
        )

    def decode(part):
        if isinstance(part, ImagePart):
            return DecodedImage(decode_image(part.data))
        if isinstance(part, AudioPart):
            samples, rate = decode_audio(part.data)
            return DecodedAudio(samples, rate)
        return part

    messages = tuple(Message(m.role, tuple(decode(p) for p in m.parts)) for m in request.messages)
    return dataclasses.replace(request, messages=messages)


class ModalityDeployment:
    """Serves one model of one modality. Wrapped with `serve.deployment` by the app builder."""

    async def __init__(
        self,
        kind: str,
        service: dict,
        *,
        telemetry: dict | None = None,
        engine_factory: EngineFactory = vllm_engine_factory,
        checkpoint_resolver: Callable[[str], Path] = resolve_checkpoint,
    ) -> None:
        self.kind = ServiceKind(kind)
        self.config = ServiceConfig.model_validate(service)
        self.accepts = SERVICE_MODALITIES[self.kind]
        settings = TelemetrySettings.model_validate(telemetry or {})
        self._tracer_provider = build_tracer_provider(settings, component=self.kind.value)
        self._tracer = self._tracer_provider.get_tracer(__name__)
        path = await asyncio.to_thread(checkpoint_resolver, self.config.model.source)
        self.engine = engine_factory(self.kind, self.config.model, path)
        await self.engine.start()

    async def generate(self, request: GenerationRequest, request_id: str) -> AsyncIterator[Chunk]:
        """Stream chunks for a validated request (called through a streaming deployment handle)."""
        queue_seconds = time.time() - request.sent_at if request.sent_at else None
        span = self._tracer.start_span(
            attr.SPAN_DEPLOYMENT,
            context=extract(request.trace_context),
            attributes={attr.SERVICE: self.kind.value, attr.REQUEST_MODEL: request.model,
                        attr.RESPONSE_ID: request_id},
        )
        if queue_seconds is not None:
            span.set_attribute(attr.QUEUE_TIME_S, queue_seconds)
        try:
            if _has_media(request):
                request = await asyncio.to_thread(decode_media, request, self.accepts)
            request = dataclasses.replace(request, trace_context=inject(trace.set_span_in_context(span)))
            stream = traced_engine_stream(self._tracer, span, self.engine.generate(request, request_id=request_id),
                                          model=request.model, request_id=request_id)
            first = True
            async for chunk in coalesce(stream, deadline=request.deadline):
                if first:
                    chunk, first = dataclasses.replace(chunk, queue_seconds=queue_seconds), False
                yield chunk
        except Exception as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()

    async def describe(self) -> dict:
        """Facts for status output and tests: model, engine start time, requests in flight."""
        return {
            "kind": self.kind.value,
            "model": self.config.model.name,
            "engine_start_seconds": getattr(self.engine, "start_seconds", None),
            "in_flight": len(getattr(self.engine, "in_flight", ())),
        }

    async def check_health(self) -> None:
        """Called periodically by Ray Serve; raising marks the replica unhealthy and gets it replaced."""
        await self.engine.check_health()

    async def __del__(self) -> None:
        engine = getattr(self, "engine", None)  # absent when __init__ failed
        if engine is not None:
            await engine.shutdown()
        shutdown = getattr(getattr(self, "_tracer_provider", None), "shutdown", None)
        if shutdown is not None:  # flush spans still in the batch
            shutdown()


def _has_media(request: GenerationRequest) -> bool:
    return any(isinstance(p, (ImagePart, AudioPart)) for m in request.messages for p in m.parts)

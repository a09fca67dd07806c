"""The gRPC Inference servicer: wire format in and out of the InferencePipeline (failures become statuses in the
interceptor, router/interceptors.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import AsyncIterator

from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.api.convert import (
    MODALITY_TO_PB,
    choices_response_to_pb,
    chunk_to_pb,
    request_from_pb,
    response_to_pb,
    sampling_to_pb,
)
from gemma_serving.config import SERVICE_MODALITIES, ServingConfig
from gemma_serving.engines.types import Chunk
from gemma_serving.errors import InvalidRequest
from gemma_serving.router.choices import choice_requests, collect_choices, combined_timing, combined_usage, merged
from gemma_serving.router.health import ServiceHealth, ServiceState
from gemma_serving.router.interceptors import credentials_of, current_request_id, current_tenant
from gemma_serving.router.pipeline import InferencePipeline, collect
from gemma_serving.router.quotas import UsageSnapshot, WindowUsage
from gemma_serving.router.status import status_for
from gemma_serving.router.timing import with_timing

MODEL_STATUS_TO_PB = {
    ServiceState.READY: pb.MODEL_STATUS_READY,
    ServiceState.STARTING: pb.MODEL_STATUS_STARTING,
    ServiceState.UNAVAILABLE: pb.MODEL_STATUS_UNAVAILABLE,
    ServiceState.SCALED_TO_ZERO: pb.MODEL_STATUS_SCALED_TO_ZERO,
    ServiceState.DEGRADED: pb.MODEL_STATUS_DEGRADED,
}


class InferenceServicer(pb_grpc.InferenceServicer):
    """Implements gemma.serving.v1.Inference over the pipeline. Request ids, authentication, error statuses and the
    RPC log come from `router/interceptors.py`: a method only converts the wire format."""

    def __init__(self, config: ServingConfig, pipeline: InferencePipeline, health: ServiceHealth) -> None:
        self._config = config
        self._pipeline = pipeline
        self._health = health

    def _choices(self, request: pb.GenerateRequest, context, request_id: str) -> list[AsyncIterator[Chunk]]:
        """One chunk stream per choice (one unless sampling.n > 1; then engine request ids get the choice index)."""
        received = time.monotonic()
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        requests = choice_requests(request_from_pb(request))
        ids = [request_id] if len(requests) == 1 else [f"{request_id}-{i}" for i in range(len(requests))]
        credentials, tenant = credentials_of(context), current_tenant()
        return [with_timing(self._pipeline.stream(
            domain,
            request_id=choice_id,
            time_remaining=context.time_remaining(),
            carrier=metadata,
            credentials=credentials,
            tenant=tenant,
        ), received=received) for domain, choice_id in zip(requests, ids)]

    async def GetUsage(self, request: pb.GetUsageRequest, context) -> pb.GetUsageResponse:
        return usage_to_pb(self._pipeline.tenancy.quotas.usage(current_tenant()))

    async def _complete(self, request: pb.GenerateRequest, context, request_id: str) -> pb.GenerateResponse:
        streams = self._choices(request, context, request_id)
        if len(streams) == 1:
            text, last = await collect(streams[0])
            return response_to_pb(text, last, request_id, request.model)
        choices = await collect_choices(streams)
        lasts = [last for _, last in choices]
        return choices_response_to_pb(choices, request_id, request.model, combined_usage(lasts),
                                      combined_timing(lasts))

    async def Generate(self, request: pb.GenerateRequest, context) -> pb.GenerateResponse:
        return await self._complete(request, context, current_request_id())

    async def GenerateStream(self, request: pb.GenerateRequest, context) -> AsyncIterator[pb.GenerateChunk]:
        request_id = current_request_id()
        streams = self._choices(request, context, request_id)
        if len(streams) == 1:
            async for chunk in streams[0]:
                yield chunk_to_pb(chunk, request_id)
            return
        pairs = merged(streams)
        try:
            async for index, chunk in pairs:
                out = chunk_to_pb(chunk, request_id)
                out.index = index
                yield out
        finally:
            await pairs.aclose()  # a client that goes away aborts every choice's engine request

    async def _batch_item(self, index: int, request: pb.GenerateRequest, context) -> pb.BatchItemResult:
        request_id = uuid.uuid4().hex  # each item is a request of its own
        try:
            return pb.BatchItemResult(index=index, response=await self._complete(request, context, request_id))
        except Exception as exc:  # an item fails alone: its status goes in its result, the batch goes on
            status = status_for(exc, request_id)
            error = pb.ItemError(code=status.code.value[0], message=status.details)
            return pb.BatchItemResult(index=index, error=error)

    def _batch_tasks(self, batch: pb.GenerateBatchRequest, context) -> list[asyncio.Task]:
        n, limit = len(batch.requests), self._config.limits.max_batch_size
        if not 1 <= n <= limit:
            raise InvalidRequest(f"requests must hold 1..{limit} requests, got {n}", field="requests")
        return [asyncio.ensure_future(self._batch_item(i, r, context)) for i, r in enumerate(batch.requests)]

    async def GenerateBatch(self, batch: pb.GenerateBatchRequest, context) -> pb.GenerateBatchResponse:
        tasks = self._batch_tasks(batch, context)
        try:
            return pb.GenerateBatchResponse(results=await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()

    async def GenerateBatchStream(self, batch: pb.GenerateBatchRequest, context) -> AsyncIterator[pb.BatchItemResult]:
        tasks = self._batch_tasks(batch, context)
        try:
            for done in asyncio.as_completed(tasks):
                yield await done
        finally:
            for task in tasks:
                task.cancel()

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        models = [
            pb.ModelInfo(
                name=s.model.name,
                service=kind.value,
                input_modalities=[MODALITY_TO_PB[m] for m in SERVICE_MODALITIES[kind]],
                context_length=s.model.engine.max_model_len,
                max_output_tokens=s.model.max_output_tokens,
                status=MODEL_STATUS_TO_PB[self._health.states[kind]],
                adapters=self._pipeline.adapters.names(kind),
                default_sampling=sampling_to_pb(
                    {**s.model.default_sampling.model_dump(), "max_tokens": s.model.default_max_tokens}
                ),
            )
            for kind, s in self._config.services.items()
        ]
        return pb.ListModelsResponse(models=models)


def _remaining(limit: int | None, used: int) -> int:
    return -1 if limit is None else max(limit - used, 0)


def _window_pb(w: WindowUsage) -> pb.QuotaWindowUsage:
    return pb.QuotaWindowUsage(
        window=w.window, window_seconds=int(w.seconds), requests_in_window=w.requests, tokens_in_window=w.tokens,
        requests_limit=-1 if w.requests_limit is None else w.requests_limit,
        tokens_limit=-1 if w.tokens_limit is None else w.tokens_limit,
        requests_remaining=_remaining(w.requests_limit, w.requests),
        tokens_remaining=_remaining(w.tokens_limit, w.tokens), reset_in_ms=int(w.reset_in_s * 1000),
    )


def usage_to_pb(usage: UsageSnapshot) -> pb.GetUsageResponse:
    minute = usage.windows[0]
    return pb.GetUsageResponse(
        tenant=usage.tenant,
        window_seconds=int(minute.seconds),
        requests_in_window=minute.requests,
        tokens_in_window=minute.tokens,
        requests_remaining=_remaining(minute.requests_limit, minute.requests),
        tokens_remaining=_remaining(minute.tokens_limit, minute.tokens),
        concurrent_streams=usage.concurrent,
        concurrent_streams_limit=-1 if usage.concurrent_limit is None else usage.concurrent_limit,
        reset_in_ms=int(minute.reset_in_s * 1000),
        windows=[_window_pb(w) for w in usage.windows],
    )

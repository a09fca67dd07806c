"""Accelerator-aware placement and scale from zero on a head + three-worker cluster (real Serve, real vLLM)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client import audio_part, message
from gemma_serving.client.samples import sample_wav

from tests.session_facts import SESSION_FACTS

pytestmark = pytest.mark.slow


def audio_request() -> pb.GenerateRequest:
    return pb.GenerateRequest(model="gemma-3n-tiny", messages=[message(audio_part(sample_wav()), "Transcribe.")],
                              sampling=pb.SamplingParams(max_tokens=8))


async def timed(call):
    began = time.monotonic()
    try:
        result = await call
    except grpc.aio.AioRpcError as exc:
        result = exc
    return time.monotonic() - began, result


async def test_text_replicas_run_only_on_nodes_with_its_accelerator(view):
    assert view.running("text") == 1
    assert len(view.nodes_of("text")) == 1 and view.nodes_of("text") <= {"l4-a", "l4-b"}
    assert view.replicas("audio") == []  # min_replicas 0: nothing until the first request


async def test_audio_scales_from_zero_and_the_wait_is_bounded_by_the_deadline(stub, view):
    """A request to a service at zero replicas waits for a cold start instead of failing; one whose deadline is too
    short for the cold start gets DEADLINE_EXCEEDED on time, and the router does not lose track of it."""
    assert view.running("audio") == 0
    assert await audio_status(stub) == pb.MODEL_STATUS_SCALED_TO_ZERO
    impatient, *patient = await asyncio.gather(
        timed(stub.Generate(audio_request(), timeout=3)),
        *(timed(stub.Generate(audio_request(), timeout=300)) for _ in range(2)),
    )
    elapsed, error = impatient
    assert isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 5
    for elapsed, reply in patient:
        assert isinstance(reply, pb.GenerateResponse), reply
        assert reply.usage.completion_tokens >= 1
    cold_start = max(e for e, _ in patient)
    SESSION_FACTS["audio scale from zero: first answer after"] = f"{cold_start:.1f} s (deadline-3 s request: " \
                                                                  f"{impatient[0]:.1f} s DEADLINE_EXCEEDED)"
    assert view.nodes_of("audio") == {"h100-a"}
    assert view.metric("gemma_serving_requests_total", service="audio") == 3  # every request accounted for
    assert view.metric("gemma_serving_requests_in_flight", service="audio") == 0
    for _ in range(40):  # the router reads Serve's replica counts every 5 s
        if await audio_status(stub) == pb.MODEL_STATUS_READY:
            break
        await asyncio.sleep(0.5)
    assert await audio_status(stub) == pb.MODEL_STATUS_READY


async def audio_status(stub) -> int:
    models = (await stub.ListModels(pb.ListModelsRequest(), timeout=10)).models
    return next(m.status for m in models if m.name == "gemma-3n-tiny")

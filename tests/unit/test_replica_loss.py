"""The router's replica-lifecycle rules in ServeHandleBackend, against scripted deployment handles:
retry once when a replica is lost before any output, UNAVAILABLE once output has streamed, and a bounded wait for
the first output (replica start) that respects the request's deadline."""

from __future__ import annotations

import asyncio
import time

import pytest
from gemma_serving.config import ServiceKind
from gemma_serving.engines.types import Chunk, GenerationRequest, Message, Sampling, TextPart
from gemma_serving.errors import DeadlineExceeded, EngineDead, InvalidRequest, NotReady, ReplicaGone
from gemma_serving.router.backends import ServeHandleBackend
from ray.exceptions import ActorDiedError

TEXT = ServiceKind.TEXT


class ScriptedStream:
    """A streaming DeploymentResponse: yields chunks, then raises `error` (if any); or never answers (`hang`)."""

    def __init__(self, chunks=(), error=None, hang=False):
        self._chunks, self._error, self._hang = list(chunks), error, hang
        self.cancelled = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._hang:
            await asyncio.sleep(3600)
        if self._chunks:
            return self._chunks.pop(0)
        if self._error is not None:
            raise self._error
        raise StopAsyncIteration

    def cancel(self):
        self.cancelled = True


class ScriptedHandle:
    """A deployment handle whose successive generate calls return the given streams."""

    def __init__(self, *streams):
        self.streams = list(streams)
        self.calls = 0
        self.generate = self

    def options(self, **kw):
        return self

    def remote(self, request, request_id):
        self.calls += 1
        return self.streams.pop(0)


def chunk(text: str, n: int) -> Chunk:
    return Chunk(text, prompt_tokens=3, completion_tokens=n)


def request(deadline: float | None = None) -> GenerationRequest:
    msgs = (Message("user", (TextPart("hi"),)),)
    return GenerationRequest(model="m", messages=msgs, sampling=Sampling(max_tokens=4), deadline=deadline)


async def run(handle, *, wait_s: float = 30.0, deadline=None, retries=None):
    backend = ServeHandleBackend({"text": handle}, max_wait_for_replica_s={TEXT: wait_s},
                                 on_retry=(retries.append if retries is not None else None))
    return [c.text async for c in backend.stream(TEXT, request(deadline), "r1")]


@pytest.mark.parametrize("lost", [ActorDiedError(), EngineDead("engine died")])
async def test_a_replica_lost_before_any_output_is_retried_once_elsewhere(lost):
    handle = ScriptedHandle(ScriptedStream(error=lost), ScriptedStream([chunk("a", 1), chunk("b", 2)]))
    retries = []
    assert await run(handle, retries=retries) == ["a", "b"]
    assert handle.calls == 2 and retries == [TEXT]


async def test_a_second_loss_is_reported_unavailable_not_retried_again():
    handle = ScriptedHandle(ScriptedStream(error=ActorDiedError()), ScriptedStream(error=ActorDiedError()))
    with pytest.raises(ReplicaGone) as info:
        await run(handle)
    assert handle.calls == 2 and info.value.grpc_code == "UNAVAILABLE" and info.value.retry_after_s


async def test_a_replica_lost_after_output_ends_the_stream_unavailable_without_retry():
    handle = ScriptedHandle(ScriptedStream([chunk("a", 1)], error=ActorDiedError()), ScriptedStream([chunk("x", 1)]))
    got = []
    with pytest.raises(ReplicaGone):
        async for c in ServeHandleBackend({"text": handle}).stream(TEXT, request(), "r1"):
            got.append(c.text)
    assert got == ["a"] and handle.calls == 1  # never a duplicated answer


async def test_request_errors_are_not_retried():
    handle = ScriptedHandle(ScriptedStream(error=InvalidRequest("bad", field="messages")), ScriptedStream())
    with pytest.raises(InvalidRequest) as info:
        await run(handle)
    assert handle.calls == 1 and info.value.field == "messages"


async def test_waiting_for_a_replica_is_bounded_by_max_wait_for_replica_s():
    stream = ScriptedStream(hang=True)
    began = time.monotonic()
    with pytest.raises(NotReady) as info:
        await run(ScriptedHandle(stream), wait_s=0.3)
    assert 0.25 < time.monotonic() - began < 2
    assert stream.cancelled  # Serve drops the queued request
    assert info.value.grpc_code == "UNAVAILABLE" and info.value.retry_after_s and "max_wait_for_replica_s" in str(
        info.value)


async def test_waiting_for_a_replica_is_bounded_by_the_deadline_first():
    stream = ScriptedStream(hang=True)
    began = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await run(ScriptedHandle(stream), wait_s=30, deadline=time.time() + 0.3)
    assert 0.25 < time.monotonic() - began < 2 and stream.cancelled


async def test_the_wait_covers_the_retry_too():
    """The bound is for the whole request, not per attempt."""
    lost_late = ScriptedStream(error=ActorDiedError())
    handle = ScriptedHandle(lost_late, ScriptedStream(hang=True))
    began = time.monotonic()
    with pytest.raises(NotReady):
        await run(handle, wait_s=0.4)
    assert time.monotonic() - began < 2 and handle.calls == 2

"""The router's replica-lifecycle rules in ServeHandleBackend, against scripted deployment handles that stream over
the real delta channel (loopback TCP):
retry once when a replica is lost before any output, UNAVAILABLE once output has streamed, and a bounded wait for
the first output (replica start) that respects the request's deadline."""

from __future__ import annotations

import asyncio
import time

import pytest
from gemma_serving.config import ServiceKind
from gemma_serving.engines.types import Chunk, GenerationRequest, Message, Sampling, TextPart
from gemma_serving.errors import DeadlineExceeded, EngineDead, InvalidRequest, NotReady, ReplicaGone
from gemma_serving.deltas.publisher import DeltaPublisher
from gemma_serving.deltas.subscriber import DeltaSubscriber
from gemma_serving.router.backends import ServeHandleBackend
from ray.exceptions import ActorDiedError

TEXT = ServiceKind.TEXT


PUBLISHER = DeltaPublisher()


class ScriptedStream:
    """A replica's generate_into call: pushes chunks over the real delta channel, then raises `error` (if any) or
    returns; or never answers (`hang`, after its chunks). Awaitable and cancellable like a DeploymentResponse."""

    def __init__(self, chunks=(), error=None, hang=False):
        self._chunks, self._error, self._hang = list(chunks), error, hang
        self.cancelled = False
        self._task = None

    def start(self, address: str, stream: int) -> ScriptedStream:
        self._task = asyncio.ensure_future(self._run(PUBLISHER.sink(address, stream)))
        return self

    async def _run(self, sink) -> None:
        for c in self._chunks:
            sink.send(c)
            await asyncio.sleep(0.01)
        if self._hang:
            await asyncio.sleep(3600)
        if self._error is not None:
            raise self._error
        sink.end()

    def __await__(self):
        return self._task.__await__()

    def cancel(self):
        self.cancelled = True
        self._task.cancel()


class ScriptedHandle:
    """A deployment handle whose successive generate_into calls return the given streams."""

    def __init__(self, *streams):
        self.streams = list(streams)
        self.calls = 0
        self.generate_into = self

    def options(self, **kw):
        return self

    def remote(self, request, request_id, address, stream):
        self.calls += 1
        return self.streams.pop(0).start(address, stream)


def chunk(text: str, n: int) -> Chunk:
    return Chunk(text, prompt_tokens=3, completion_tokens=n)


def request(budget_s: float | None = None) -> GenerationRequest:
    msgs = (Message("user", (TextPart("hi"),)),)
    return GenerationRequest(model="m", messages=msgs, sampling=Sampling(max_tokens=4), budget_s=budget_s)


async def run(handle, *, wait_s: float = 30.0, budget_s=None, retries=None):
    backend = ServeHandleBackend({"text": handle}, SUBSCRIBER[0], max_wait_for_replica_s={TEXT: wait_s},
                                 on_retry=(retries.append if retries is not None else None))
    return [c.text async for c in backend.stream(TEXT, request(budget_s), "r1")]


SUBSCRIBER: list[DeltaSubscriber] = []


@pytest.fixture(autouse=True)
def _subscriber(subscriber):
    SUBSCRIBER[:] = [subscriber]


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
        async for c in ServeHandleBackend({"text": handle}, SUBSCRIBER[0]).stream(TEXT, request(), "r1"):
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
        await run(ScriptedHandle(stream), wait_s=30, budget_s=0.3)
    assert 0.25 < time.monotonic() - began < 2 and stream.cancelled


async def test_the_deadline_holds_after_the_first_output_too():
    """A replica that stops producing mid-stream (wedged) cannot hold the stream past its deadline."""
    stream = ScriptedStream([chunk("a", 1)], hang=True)
    got, began = [], time.monotonic()
    with pytest.raises(DeadlineExceeded, match="passed its deadline"):
        backend = ServeHandleBackend({"text": ScriptedHandle(stream)}, SUBSCRIBER[0])
        async for c in backend.stream(TEXT, request(budget_s=0.4), "r1"):
            got.append(c.text)
    assert got == ["a"] and 0.35 < time.monotonic() - began < 2 and stream.cancelled


async def test_deltas_of_a_stream_given_up_are_dropped_not_misrouted():
    """A retried request gets a new stream id: late deltas of the first attempt reach no one."""
    handle = ScriptedHandle(ScriptedStream(error=ActorDiedError()), ScriptedStream([chunk("b", 1)]))
    assert await run(handle) == ["b"]
    assert SUBSCRIBER[0].open_streams == 0


async def test_the_wait_covers_the_retry_too():
    """The bound is for the whole request, not per attempt."""
    lost_late = ScriptedStream(error=ActorDiedError())
    handle = ScriptedHandle(lost_late, ScriptedStream(hang=True))
    began = time.monotonic()
    with pytest.raises(NotReady):
        await run(handle, wait_s=0.4)
    assert time.monotonic() - began < 2 and handle.calls == 2

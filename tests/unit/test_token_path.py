"""The token path over the real delta channel (loopback TCP) behind a real gRPC router: every stream's deltas
arrive complete and in order under concurrency, and one channel message carries many streams' deltas."""

from __future__ import annotations

import asyncio
import contextlib

from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client import message
from gemma_serving.config import ServiceKind
from gemma_serving.deployments import tick_window

from tests.unit.conftest import start_router


async def _stream_text(stub, i: int, max_tokens: int) -> tuple[str, int, int]:
    text, chunks, last = [], 0, None
    request = pb.GenerateRequest(model="text-model", messages=[message(f"prompt {i}")],
                                 sampling=pb.SamplingParams(max_tokens=max_tokens))
    async for chunk in stub.GenerateStream(request):
        text.append(chunk.text)
        chunks += 1
        last = chunk
    return "".join(text), chunks, last.usage.completion_tokens


async def test_64_concurrent_streams_arrive_complete_and_in_order(config):
    import grpc
    from gemma_serving.api import inference_pb2_grpc as pb_grpc

    router, backend = await start_router(config)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.port}")
    stub = pb_grpc.InferenceStub(channel)
    try:
        lengths = [20 + (i % 7) * 10 for i in range(64)]
        results = await asyncio.gather(*(_stream_text(stub, i, n) for i, n in enumerate(lengths)))
        for (text, _, completion_tokens), n in zip(results, lengths):
            # FakeEngine's tokens are " word0 word1 ...": any loss, duplicate or reordering changes the text.
            assert text == "".join(f" word{k}" for k in range(n))
            assert completion_tokens == n
        deltas = sum(lengths)
        messages = backend.subscriber.messages_received
        # Deltas of concurrent streams share channel messages (one per event-loop pass, not one per token; the
        # FakeEngines' timers are not in step, so fewer share one than vLLM's engine step would).
        assert messages < deltas / 2, (messages, deltas)
        assert backend.subscriber.open_streams == 0
    finally:
        await channel.close()
        await router.drain_and_stop(0)


async def _paced_router(make_router, *, flush_ms: float, step_delay_s: float, max_flush_ms: float = 0):
    """A router over FakeEngines that, like vLLM, keep generating while a stream is paced (merge_late); the window
    stays `flush_ms` unless `max_flush_ms` is above it."""
    window = {"text": {"model": {"name": "text-model", "source": "/m/t", "max_output_tokens": 100,
                                 "default_max_tokens": 64},
                       "deployment": {"stream_flush_ms": flush_ms, "stream_flush_max_ms": max_flush_ms}}}
    return await make_router({"services": window}, step_delay_s=step_delay_s, merge_late=True)


@contextlib.asynccontextmanager
async def _channel(router):
    import grpc
    from gemma_serving.api import inference_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
        yield pb_grpc.InferenceStub(channel)


async def test_a_stream_shows_its_first_token_at_once_with_a_flush_window(make_router):
    """stream_flush_ms holds later deltas to merge them, never the first one."""
    import time

    router, _backend = await _paced_router(make_router, flush_ms=200, step_delay_s=0.01)
    async with _channel(router) as stub:
        began = time.monotonic()
        stream = stub.GenerateStream(pb.GenerateRequest(model="text-model", messages=[message("hi")],
                                                        sampling=pb.SamplingParams(max_tokens=40)))
        first = await anext(aiter(stream))
        assert time.monotonic() - began < 0.15 and first.text == " word0"
        rest = [c async for c in stream]
    # 39 more tokens over ~0.4 s in a 200 ms window: a few merged chunks, nothing lost.
    assert len(rest) <= 5 and "".join(c.text for c in rest) == "".join(f" word{k}" for k in range(1, 40))


async def test_paced_streams_wake_on_one_tick_and_share_channel_messages(make_router):
    """With a flush window, every stream of a replica is pulled on the same tick: their deltas leave together."""
    router, backend = await _paced_router(make_router, flush_ms=50, step_delay_s=0.005)
    async with _channel(router) as stub:

        async def staggered(i: int):
            await asyncio.sleep(i * 0.006)  # out of phase: each stream's own window would tick at its own time
            return await _stream_text(stub, i, 60)

        results = await asyncio.gather(*(staggered(i) for i in range(8)))
    assert all(text == "".join(f" word{k}" for k in range(60)) for text, _, _ in results)
    # 8 streams x ~0.3 s at 50 ms ticks: each stream's first delta alone, ~7 ticks shared by all 8 streams, and each
    # stream's end, which leaves as soon as the engine has it (not at a tick): ~23, one or two more on a busy box
    # (windows of their own would send ~8 x 7 messages, 56 measured).
    assert backend.subscriber.messages_received <= 8 + 8 + 16, backend.subscriber.messages_received


async def test_a_paced_stream_ends_when_its_final_output_is_ready_not_at_its_next_tick(make_router):
    """The end of a stream is not held for the tick: the engine tells the replica its final output is ready."""
    import time

    router, _backend = await _paced_router(make_router, flush_ms=1000, step_delay_s=0.01)
    loop = asyncio.get_running_loop()
    async with _channel(router) as stub:
        await asyncio.sleep(1.0 - loop.time() % 1.0 + 0.02)  # just past a tick: the next one is ~1 s away
        began = time.monotonic()
        chunks = [c async for c in stub.GenerateStream(pb.GenerateRequest(
            model="text-model", messages=[message("hi")], sampling=pb.SamplingParams(max_tokens=10)))]
        took = time.monotonic() - began
    assert "".join(c.text for c in chunks) == "".join(f" word{k}" for k in range(10))
    assert chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert took < 0.5, took  # 10 tokens of 10 ms; held for the tick it would take ~1 s


async def _chunks_per_stream(make_router, *, max_flush_ms: float) -> tuple[float, float]:
    """Chunks per 40-token stream (4 at once) on an engine slower than the 10 ms window, and the window at the end."""
    router, backend = await _paced_router(make_router, flush_ms=10, step_delay_s=0.03, max_flush_ms=max_flush_ms)
    async with _channel(router) as stub:
        results = await asyncio.gather(*(_stream_text(stub, i, 40) for i in range(4)))
    assert all(text == "".join(f" word{k}" for k in range(40)) for text, _, _ in results)
    window_ms = (await backend.deployments[ServiceKind.TEXT].describe())["stream_window_ms"]
    return sum(chunks for _, chunks, _ in results) / len(results), window_ms


async def test_the_window_widens_while_engine_steps_are_slower_than_it(make_router, monkeypatch):
    """One token per message merges nothing: the replica widens its window (up to stream_flush_max_ms) to about
    three engine steps, and streams carry several tokens per message, every token still there and in order."""
    monkeypatch.setattr(tick_window, "ADJUST_S", 0.1)
    fixed_chunks, fixed_window = await _chunks_per_stream(make_router, max_flush_ms=0)
    wide_chunks, wide_window = await _chunks_per_stream(make_router, max_flush_ms=100)
    assert fixed_window == 10 and fixed_chunks >= 28, fixed_chunks  # a 30 ms step, a 10 ms window: ~a message per token
    assert 60 <= wide_window <= 100, wide_window  # about three 30 ms steps
    assert wide_chunks <= 0.7 * fixed_chunks, (wide_chunks, fixed_chunks)

"""PacedEngine: an experiment on the platform's hot path, not a production engine.

The platform sends one message per engine delta through every hop (text replica -> router replica -> client); with
vLLM each delta is one token, and each message costs CPU in every process it crosses (see the `cpu_ms_per_chunk` of
bench/results/serving.json). `deployments/streaming.coalesce` merges only deltas that are already queued, which on a
busy CPU box rarely happens (Serve takes every yielded item at once). PacedEngine wraps an engine and sends the first
chunk at once (time to first token unchanged) and later chunks at most once per `window_s` per stream, merging
everything that arrived meanwhile; the final chunk goes out as soon as it arrives. bench/serving.py runs the
platform with it as the `platform-paced` target to measure what time-window coalescing would buy.

The window comes from BENCH_PACE_WINDOW_S (seconds, default 0.05) in the replica's environment.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

from gemma_serving.engines.types import Chunk, GenerationRequest

_DONE = object()


class PacedEngine:
    def __init__(self, inner, window_s: float) -> None:
        self.inner = inner
        self.window_s = window_s

    def __getattr__(self, name):  # start_seconds, in_flight, ... of the wrapped engine
        return getattr(self.inner, name)

    async def start(self) -> None:
        await self.inner.start()

    async def generate(self, request: GenerationRequest, *, request_id: str) -> AsyncIterator[Chunk]:
        queue: asyncio.Queue = asyncio.Queue()
        source = self.inner.generate(request, request_id=request_id)

        async def pump() -> None:
            try:
                async for chunk in source:
                    queue.put_nowait(chunk)
                queue.put_nowait(_DONE)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
                queue.put_nowait(exc)

        task = asyncio.create_task(pump())
        getter: asyncio.Future | None = None
        pending: Chunk | None = None
        last_sent: float | None = None  # None until the first chunk went out
        try:
            while True:
                if getter is None:
                    getter = asyncio.ensure_future(queue.get())
                timeout = None if pending is None else max(0.0, last_sent + self.window_s - time.monotonic())
                done, _ = await asyncio.wait({getter}, timeout=timeout)
                if not done:  # the window passed: send what we have, keep waiting with the same getter
                    yield pending
                    pending, last_sent = None, time.monotonic()
                    continue
                item, getter = getter.result(), None
                if item is _DONE or isinstance(item, Exception):
                    if pending is not None:
                        yield pending
                    if item is _DONE:
                        return
                    raise item
                pending = item if pending is None else pending.merge(item)
                if (
                    last_sent is None
                    or pending.finish_reason is not None
                    or time.monotonic() >= last_sent + self.window_s
                ):
                    yield pending
                    pending, last_sent = None, time.monotonic()
        finally:
            if getter is not None:
                getter.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await source.aclose()

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    async def check_health(self) -> None:
        await self.inner.check_health()

    async def shutdown(self) -> None:
        await self.inner.shutdown()


def paced_vllm_engine_factory(kind, model, path) -> PacedEngine:
    """build_app engine factory: the platform's VllmEngine, paced."""
    from gemma_serving.deployments.modality import vllm_engine_factory

    return PacedEngine(vllm_engine_factory(kind, model, path), float(os.environ.get("BENCH_PACE_WINDOW_S", "0.05")))


def paced_transformers_engine_factory(kind, model, path) -> PacedEngine:
    """build_app engine factory: bench/transformers_engine.py's engine, paced (gpu profile)."""
    from transformers_engine import transformers_engine_factory

    return PacedEngine(
        transformers_engine_factory(kind, model, path), float(os.environ.get("BENCH_PACE_WINDOW_S", "0.05"))
    )

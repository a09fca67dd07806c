"""Coalescing engine deltas for Ray streaming callers: one item per batch of ready deltas instead of one per token.

(The router does not stream over Ray items: it uses the delta channel, `gemma_serving.deltas`.)

Each message across a Ray hop costs ~1-3 ms of CPU; when the consumer is slower than the engine, the deltas that piled
up meanwhile are merged into one chunk. With a fast consumer nothing is delayed: a delta is forwarded as soon as it
arrives.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from gemma_serving.engines.types import Chunk
from gemma_serving.errors import DeadlineExceeded

_DONE = object()


async def coalesce(
    source: AsyncIterator[Chunk], *, timeout_s: float | None = None, max_pending: int = 256
) -> AsyncIterator[Chunk]:
    """Yield chunks from `source`, merging those that are ready at once. Closing this closes `source`.

    After `timeout_s` the source is closed (which aborts the engine request) and DeadlineExceeded is raised. The
    timer lives in the pump task, so it never fires inside the consumer's code.
    """
    queue: asyncio.Queue = asyncio.Queue(max_pending)
    remaining = timeout_s

    async def pump() -> None:
        try:
            async with asyncio.timeout(remaining):
                async for chunk in source:
                    await queue.put(chunk)
            await queue.put(_DONE)
        except TimeoutError:
            await source.aclose()
            await queue.put(DeadlineExceeded("the request passed its deadline and was aborted"))
        except Exception as exc:  # handed to the consumer, which re-raises it in its own task
            await queue.put(exc)

    task = asyncio.create_task(pump())
    try:
        while True:
            item = await queue.get()
            done = False
            merged: Chunk | None = None
            while True:
                if item is _DONE:
                    done = True
                    break
                if isinstance(item, Exception):
                    if merged is not None:
                        yield merged
                    raise item
                merged = item if merged is None else merged.merge(item)
                if queue.empty():
                    break
                item = queue.get_nowait()
            if merged is not None:
                yield merged
            if done:
                return
    finally:
        if not task.done():
            task.cancel()
            # Wait so that the source's own cleanup (the engine abort) has run before we return.
            await asyncio.gather(task, return_exceptions=True)

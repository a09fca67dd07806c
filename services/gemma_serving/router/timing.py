"""Per-response timing on the last chunk: queue time, time to first token, generation time and tokens per second."""

from __future__ import annotations

import dataclasses
import time
from typing import AsyncIterator

from gemma_serving.engines.types import Chunk, ResponseTiming


async def with_timing(stream: AsyncIterator[Chunk], *, received: float) -> AsyncIterator[Chunk]:
    """`stream` with ResponseTiming on its last chunk (the one with a finish reason); `received` is when the surface
    got the request (time.monotonic()). Per chunk it costs one comparison; the clock is read on the first and last."""
    first_at: float | None = None
    queue: float | None = None
    try:
        async for chunk in stream:
            if first_at is None:
                first_at, queue = time.monotonic(), chunk.queue_seconds
            if chunk.finish_reason is not None:
                total = max(time.monotonic() - received, 1e-9)
                chunk = dataclasses.replace(chunk, timing=ResponseTiming(
                    queue_seconds=None if queue is None else max(queue, 0.0),
                    time_to_first_token_seconds=first_at - received,
                    generation_seconds=total,
                    tokens_per_second=chunk.completion_tokens / total,
                ))
            yield chunk
    finally:
        await stream.aclose()


def timing_json(timing: ResponseTiming | None) -> dict | None:
    """The OpenAI surface's `timing` extension object (seconds, rounded to microseconds)."""
    if timing is None:
        return None
    return {k: None if v is None else round(v, 6) for k, v in dataclasses.asdict(timing).items()}

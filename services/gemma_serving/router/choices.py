"""Several choices per request (sampling.n): one engine request per choice, run concurrently, merged back.

vLLM's own server does the same inside the engine (n child requests, child i seeded with seed + i); here each choice
is a request of its own through the pipeline, so it is admitted, charged and traced like one (documented in the
README). Usage adds the choices' completion tokens and counts the shared prompt once, as OpenAI and vLLM report it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import AsyncIterator

from gemma_serving.engines.sampling import PARAMS_BY_NAME, check_range
from gemma_serving.engines.types import Chunk, GenerationRequest, ResponseTiming
from gemma_serving.errors import InvalidRequest
from gemma_serving.router.pipeline import collect

_INT64 = 2**63


def choice_requests(request: GenerationRequest) -> tuple[GenerationRequest, ...]:
    """One request per choice (n unset on each); a seed becomes seed + index, as vLLM seeds its child requests."""
    n = request.sampling.n
    if n is None or n == 1:
        return (request,)
    check_range(PARAMS_BY_NAME["n"], n, None, None)
    if request.sampling.temperature == 0:  # as vLLM's own server: greedy choices would all be the same text
        raise InvalidRequest(f"sampling.n must be 1 when using greedy sampling (temperature 0), got {n}",
                             field="sampling.n")
    seed = request.sampling.seed

    def choice(i: int) -> GenerationRequest:
        seeded = None if seed is None else (seed + i + _INT64) % (2 * _INT64) - _INT64  # stays an int64
        return dataclasses.replace(request, sampling=dataclasses.replace(request.sampling, n=None, seed=seeded))

    return tuple(choice(i) for i in range(n))


async def merged(streams: list[AsyncIterator[Chunk]]) -> AsyncIterator[tuple[int, Chunk]]:
    """(choice index, chunk) from all `streams` as they arrive; the first failure fails the whole, and closing it
    closes every stream (which aborts their engine requests)."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, stream: AsyncIterator[Chunk]) -> None:
        try:
            async for chunk in stream:
                await queue.put((i, chunk))
            await queue.put((i, done))
        except Exception as exc:  # handed to the consumer, which raises it
            await queue.put((i, exc))
        finally:
            await stream.aclose()

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            i, item = await queue.get()
            if item is done:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def collect_choices(streams: list[AsyncIterator[Chunk]]) -> list[tuple[str, Chunk]]:
    """(text, last chunk) of every choice, in index order; the first failure is raised and cancels the others."""
    tasks = [asyncio.ensure_future(collect(s)) for s in streams]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


def combined_usage(lasts: list[Chunk]) -> tuple[int, int]:
    """(prompt tokens, completion tokens) of a request over its choices: the prompt once, completions summed."""
    return (lasts[0].prompt_tokens, sum(c.completion_tokens for c in lasts))


def combined_timing(lasts: list[Chunk]) -> ResponseTiming | None:
    """The request's timing over its choices: first output of any, last output of all, tokens of all."""
    timings = [c.timing for c in lasts if c.timing is not None]
    if not timings:
        return None
    queues = [t.queue_seconds for t in timings if t.queue_seconds is not None]
    generation = max(t.generation_seconds for t in timings)
    return ResponseTiming(
        queue_seconds=min(queues) if queues else None,
        time_to_first_token_seconds=min(t.time_to_first_token_seconds for t in timings),
        generation_seconds=generation,
        tokens_per_second=combined_usage(lasts)[1] / generation,
    )

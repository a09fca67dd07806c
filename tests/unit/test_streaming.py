import asyncio

import pytest
from gemma_serving.deployments.streaming import coalesce
from gemma_serving.engines.types import Chunk, FinishReason


async def _source(n, delay=0.0, fail_at=None, closed=None):
    try:
        for i in range(n):
            if fail_at == i:
                raise ValueError("boom")
            await asyncio.sleep(delay)
            yield Chunk(f"t{i} ", 3, i + 1, FinishReason.LENGTH if i == n - 1 else None)
    finally:
        if closed is not None:
            closed.append(True)


async def test_fast_consumer_gets_every_delta():
    chunks = [c async for c in coalesce(_source(5, delay=0.01))]
    assert [c.text for c in chunks] == [f"t{i} " for i in range(5)]
    assert chunks[-1].finish_reason is FinishReason.LENGTH


async def test_slow_consumer_gets_merged_deltas_with_nothing_lost():
    chunks = []
    async for c in coalesce(_source(50)):
        chunks.append(c)
        await asyncio.sleep(0.01)
    assert len(chunks) < 50
    assert "".join(c.text for c in chunks) == "".join(f"t{i} " for i in range(50))
    assert chunks[-1].completion_tokens == 50 and chunks[-1].finish_reason is FinishReason.LENGTH


async def test_source_error_reaches_consumer_after_earlier_text():
    seen = []
    with pytest.raises(ValueError, match="boom"):
        async for c in coalesce(_source(5, delay=0.01, fail_at=3)):
            seen.append(c.text)
    assert "".join(seen) == "t0 t1 t2 "


async def test_closing_early_closes_the_source():
    closed = []
    stream = coalesce(_source(1000, delay=0.01, closed=closed))
    async for _ in stream:
        break
    await stream.aclose()
    assert closed == [True]


async def test_deadline_closes_the_source_and_raises_deadline_exceeded():
    from gemma_serving.errors import DeadlineExceeded

    closed, seen = [], []
    with pytest.raises(DeadlineExceeded):
        async for c in coalesce(_source(1000, delay=0.01, closed=closed), timeout_s=0.1):
            seen.append(c)
    assert closed == [True] and 3 <= len(seen) < 20


async def test_past_deadline_fails_before_any_output():
    from gemma_serving.errors import DeadlineExceeded

    closed = []
    with pytest.raises(DeadlineExceeded):
        async for _ in coalesce(_source(5, closed=closed), timeout_s=-1):
            pass

"""bench/wake_cost.py: the spaced trivial engine, the per-chunk arithmetic and the per-wake timing."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from router_overhead import TrivialEngine  # noqa: E402
from wake_cost import per_chunk_us, sleep_cost_us, sleeps_in  # noqa: E402

from gemma_serving.engines.types import FinishReason, GenerationRequest, Message, Sampling, TextPart  # noqa: E402


def _request(max_tokens: int) -> GenerationRequest:
    return GenerationRequest("fake", (Message("user", (TextPart("hi"),)),), Sampling(max_tokens=max_tokens))


async def _timed_chunks(engine: TrivialEngine, max_tokens: int) -> tuple[list, float]:
    began = time.monotonic()
    chunks = [c async for c in engine.generate(_request(max_tokens), request_id="r")]
    return chunks, time.monotonic() - began


def test_the_trivial_engine_yields_one_token_per_chunk_gap_apart():
    engine = TrivialEngine()
    engine.gap_s = 0.02
    chunks, took = asyncio.run(_timed_chunks(engine, 5))
    assert [c.completion_tokens for c in chunks] == [1, 2, 3, 4, 5]
    assert [c.finish_reason for c in chunks] == [None] * 4 + [FinishReason.LENGTH]
    assert took >= 5 * 0.02 * 0.9


def test_cpu_per_chunk_is_the_difference_spread_over_the_extra_chunks():
    assert per_chunk_us(1.0, 2.5, 16) == 100.0
    assert per_chunk_us(2.0, 2.0, 4) == 0.0


def test_every_gap_is_timed_long_enough_to_average():
    assert sleeps_in(0.0) == 20_000
    assert sleeps_in(0.02) == 100
    assert sleeps_in(0.5) == 50


def test_a_wake_costs_cpu_and_a_busy_wait_would_show():
    assert sleep_cost_us("asyncio", 0.0) > 0
    assert 0 < sleep_cost_us("time.sleep", 0.001) < 1000  # a sleep is not a spin: far below the 1,000 µs slept

"""FakeEngine: a deterministic engine for unit tests of router and deployment logic only."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from gemma_serving.engines.types import Chunk, FinishReason, GenerationRequest
from gemma_serving.errors import EngineDead


class FakeEngine:
    """Echoes `word{i}` tokens; records aborts so tests can check cancellation reached the engine."""

    def __init__(self, *, step_delay_s: float = 0.0) -> None:
        self.step_delay_s = step_delay_s
        self.started = False
        self.healthy = True
        self.in_flight: set[str] = set()
        self.aborted: list[str] = []

    async def start(self) -> None:
        self.started = True

    async def generate(self, request: GenerationRequest, *, request_id: str) -> AsyncIterator[Chunk]:
        if not self.healthy:
            raise EngineDead("fake engine is dead")
        prompt_tokens = sum(len(getattr(p, "text", "x").split()) for m in request.messages for p in m.parts)
        self.in_flight.add(request_id)
        try:
            for i in range(request.sampling.max_tokens):
                await asyncio.sleep(self.step_delay_s)
                last = i + 1 == request.sampling.max_tokens
                yield Chunk(f" word{i}", prompt_tokens, i + 1, FinishReason.LENGTH if last else None)
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request_id)
            raise
        finally:
            self.in_flight.discard(request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def check_health(self) -> None:
        if not self.healthy:
            raise EngineDead("fake engine is dead")

    async def shutdown(self) -> None:
        self.started = False

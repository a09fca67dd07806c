"""FakeEngine: a deterministic engine for unit tests of router and deployment logic only."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from gemma_serving.engines.types import Chunk, FinishReason, GenerationRequest, TokenLogprob
from gemma_serving.errors import EngineDead


class FakeEngine:
    """Emits ` word{i}` tokens (or the characters of `script`); records aborts so tests can check cancellation
    reached the engine, and the requests it saw."""

    def __init__(self, *, step_delay_s: float = 0.0, script: str | None = None) -> None:
        self.step_delay_s = step_delay_s
        self.script = script
        self.seen: list[GenerationRequest] = []
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
        self.seen.append(request)
        self.in_flight.add(request_id)
        budget = request.sampling.max_tokens
        n = budget if self.script is None else min(budget, len(self.script))
        reason = FinishReason.LENGTH if n == budget else FinishReason.STOP
        try:
            for i in range(n):
                await asyncio.sleep(self.step_delay_s)
                token = self.script[i] if self.script is not None else f" word{i}"
                top = request.sampling.top_logprobs or 0
                logprobs = (_logprobs(token, i, top),) if request.sampling.logprobs else ()
                yield Chunk(token, prompt_tokens, i + 1, reason if i + 1 == n else None, logprobs=logprobs)
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


def _logprobs(token: str, i: int, top: int) -> TokenLogprob:
    """Made-up but consistent: the sampled token is the most likely, alternatives `alt{k}` less so."""
    sampled = -0.1 * (i + 1)
    return TokenLogprob(token, sampled, ((token, sampled), *((f"alt{k}", sampled - k) for k in range(1, top)))[:top])

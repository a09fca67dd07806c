"""FakeEngine: a deterministic engine for unit tests of router and deployment logic only."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

from gemma_serving.engines.types import Chunk, FinishReason, GenerationRequest, TokenLogprob
from gemma_serving.errors import EngineDead


class FakeEngine:
    """Emits ` word{i}` tokens (or the characters of `script`); records aborts so tests can check cancellation
    reached the engine, and the requests it saw."""

    def __init__(self, *, step_delay_s: float = 0.0, script: str | None = None, merge_late: bool = False) -> None:
        self.step_delay_s = step_delay_s
        #: Model vLLM's engine clock: tokens are produced every step whether or not the consumer pulls, and a late
        #: pull gets every token produced meanwhile merged (off: one token per pull, for exact chunk counts).
        self.merge_late = merge_late
        self.script = script
        self.seen: list[GenerationRequest] = []
        self.started = False
        self.healthy = True
        self.in_flight: set[str] = set()
        self.aborted: list[str] = []
        #: With merge_late: loop time at which each running request's final token is produced.
        self._final_at: dict[str, float] = {}

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
        loop = asyncio.get_running_loop()
        began = loop.time()
        self._final_at[request_id] = began + n * self.step_delay_s
        try:
            done = 0
            while done < n:
                await asyncio.sleep(self.step_delay_s)
                # With merge_late, tokens come on the engine's own clock, as in vLLM: a consumer that pulls late gets
                # every token generated meanwhile merged into one delta (vLLM's output collector merges DELTA outputs).
                ready = done + 1
                if self.merge_late and self.step_delay_s > 0:
                    ready = max(ready, min(n, int((loop.time() - began) / self.step_delay_s)))
                tokens = [self.script[i] if self.script is not None else f" word{i}" for i in range(done, ready)]
                top = request.sampling.top_logprobs or 0
                logprobs = tuple(_logprobs(token, i, top) for i, token in zip(range(done, ready), tokens)) \
                    if request.sampling.logprobs else ()
                done = ready
                yield Chunk("".join(tokens), prompt_tokens, done, reason if done == n else None, logprobs=logprobs)
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request_id)
            raise
        finally:
            self.in_flight.discard(request_id)
            self._final_at.pop(request_id, None)

    def on_final_output(self, request_id: str, callback: Callable[[], None]) -> bool:
        """Like VllmEngine's: `callback` when the final token is produced on the engine's clock (merge_late only: a
        pull-driven fake produces nothing unpulled)."""
        at = self._final_at.get(request_id)
        if not self.merge_late or at is None:
            return False
        loop = asyncio.get_running_loop()
        loop.call_at(max(at, loop.time()), callback)
        return True

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

"""A paced stream's wait for its next tick (deployment.stream_flush_ms), cut short when its engine says the final
output is ready: the end of a stream leaves at once instead of up to one tick late (~10 ms of a ~200 ms request at
20 ms ticks, the c=1 throughput deficit in bench/token_path.py's run F)."""

from __future__ import annotations

import asyncio

from gemma_serving.futures import resolve


class TickWait:
    """`wait(delay)` sleeps like asyncio.sleep (one future and one timer per wait) unless `final()` was called,
    before or during it. `final` must run on the stream's event loop (vLLM's output handler does)."""

    __slots__ = ("_loop", "_waiting", "ended", "cut_short")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: asyncio.Future | None = None
        self.ended = False
        #: A wait was ended early by `final` (the stream's end left before its tick).
        self.cut_short = False

    def final(self) -> None:
        self.ended = True
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_result(None)
            self.cut_short = True

    async def wait(self, delay: float) -> None:
        if self.ended:
            return
        waiting = self._waiting = self._loop.create_future()
        timer = self._loop.call_later(delay, resolve, waiting)
        try:
            await waiting
        finally:
            timer.cancel()
            self._waiting = None

"""The replica's read of vLLM's engine-core output socket: a plain non-blocking ZeroMQ read on the event loop's own
readiness callback instead of pyzmq's asyncio futures.

vLLM's front end (`AsyncMPClient`, 0.32) reads every engine step's outputs with `await output_socket.recv_multipart()`
on a `zmq.asyncio` socket. pyzmq makes that a future per message, re-arms its poll state twice and asks the socket
for its events four times; on the dev VM that costs 40-50 µs of CPU per message more than draining the socket with
`NOBLOCK` reads and waiting on its file descriptor (`bench/channel_transport.py`, zmq against zmq-direct-read), once per engine step, which at
c=1 is once per token. Only the one task that reads the socket changes; what it reads is the same.

Paced reads (`EngineOutputReader.pace`, deployment.stream_flush_ms): while every request in flight is a paced stream
past its first token and not about to end, nobody needs an engine step's output before the stream's next tick, so the
reader stops watching the socket and drains it once per tick, on the streams' own clock. Each engine step then costs
the replica no event-loop wake of its own: at c=1 one wake per tick instead of one per token (a cold wake is
~150-300 µs of CPU on the dev VM). The output is the same, in order; vLLM merges a request's deltas meanwhile. A
request that is waiting for its first token or whose next pull may be its last (`ReadDemand`) makes the reader watch
the socket again at once, so time to first token and the end of a stream are not held for the tick.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import zmq
import zmq.asyncio

from gemma_serving.futures import resolve

log = logging.getLogger(__name__)


class EngineOutputReader:
    """`recv_multipart` for the single task that reads a `zmq.asyncio` socket: messages already queued are taken at
    once; otherwise it waits for the socket's file descriptor, watched by one reader callback for its life."""

    __slots__ = ("_socket", "_async_socket", "_loop", "_waiter", "_watching", "_window_s", "_timer", "streams",
                 "eager", "messages", "paced_waits")

    def __init__(self, socket: zmq.asyncio.Socket, loop: asyncio.AbstractEventLoop) -> None:
        self._async_socket = socket
        self._socket = zmq.Socket.shadow(socket.underlying)  # the same socket, synchronous calls
        self._loop = loop
        self._waiter: asyncio.Future | None = None
        self._watching = False
        self._window_s = 0.0
        self._timer: asyncio.TimerHandle | None = None
        #: Requests in flight, and those of them that need their next output at once (ReadDemand).
        self.streams = 0
        self.eager = 0
        #: Messages read; waits for a tick instead of the socket (describe(), tests).
        self.messages = 0
        self.paced_waits = 0

    def pace(self, window_s: float) -> None:
        """Drain the socket once per `window_s` tick (the next multiple of it on the loop clock) while no request
        needs its output at once; 0 reads every message as it comes."""
        self._window_s = window_s

    def demand(self, max_tokens: int | None) -> "ReadDemand":
        """A request's say in the reads, from its start (eager until its first output) to `close()`."""
        return ReadDemand(self, max_tokens)

    def want_eager(self) -> None:
        self.eager += 1
        if self.eager == 1 and self._timer is not None:  # waiting for a tick: watch the socket now
            resolve(self._waiter)

    @property
    def paced(self) -> bool:
        return self._window_s > 0 and self.streams > 0 and self.eager == 0

    async def recv_multipart(self, flags: int = 0, copy: bool = True, track: bool = False) -> list[Any]:
        socket = self._socket
        while True:
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK, copy=copy, track=track)
            except zmq.Again:
                pass
            else:
                self.messages += 1
                return frames
            waiter = self._waiter = self._loop.create_future()
            if self.paced:
                self._wait_for_tick(waiter)
            elif not self._watching:
                self._watch()
            try:
                await waiter
            finally:
                self._waiter = None
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None

    def _wait_for_tick(self, waiter: asyncio.Future) -> None:
        if self._watching:
            self._loop.remove_reader(self._socket.FD)
            self._watching = False
        window, loop = self._window_s, self._loop
        self._timer = loop.call_later(window - loop.time() % window, resolve, waiter)
        self.paced_waits += 1

    def _watch(self) -> None:
        # pyzmq registers its own callback on the descriptor first (and so removes the descriptor's callback, ours,
        # when vLLM closes the socket); ours replaces it: nothing else awaits this socket.
        self._async_socket._get_loop()
        self._loop.add_reader(self._socket.FD, self._readable)
        self._watching = True

    def _readable(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)
        else:  # between reads: let ZeroMQ take its commands, so the descriptor is quiet until something new comes
            self._socket.get(zmq.EVENTS)


class ReadDemand:
    """One request's need for its outputs: at once until its first output, and again once its remaining tokens are
    no more than its last pull brought (+1), i.e. its next pull may be its end. Without max_tokens an end is
    unforeseen and may wait for the tick."""

    __slots__ = ("_reader", "_max_tokens", "_eager", "_open")

    def __init__(self, reader: EngineOutputReader, max_tokens: int | None) -> None:
        self._reader = reader
        self._max_tokens = max_tokens
        self._eager = True
        self._open = True
        reader.streams += 1
        reader.want_eager()

    def pulled(self, new_tokens: int, total_tokens: int) -> None:
        """After each pull: `new_tokens` in it, `total_tokens` so far."""
        ending = self._max_tokens is not None and self._max_tokens - total_tokens <= new_tokens + 1
        if ending and not self._eager:
            self._eager = True
            self._reader.want_eager()
        elif self._eager and not ending:
            self._eager = False
            self._reader.eager -= 1

    def close(self) -> None:
        if self._open:
            self._open = False
            self._reader.streams -= 1
            if self._eager:
                self._reader.eager -= 1


def read_engine_outputs_directly(llm: Any) -> EngineOutputReader | None:
    """Give vLLM's output task `EngineOutputReader.recv_multipart`; call it right after building the `AsyncLLM`, on
    its event loop (the task's reads go through whatever `recv_multipart` the socket has when each begins). None
    where vLLM's layout is not 0.32's (the task keeps pyzmq's read)."""
    resources = getattr(getattr(llm, "engine_core", None), "resources", None)
    socket = getattr(resources, "output_socket", None)
    if not isinstance(socket, zmq.asyncio.Socket) or not hasattr(socket, "_get_loop"):
        log.info("vLLM's engine output socket is not where 0.32 keeps it: read through pyzmq's asyncio socket")
        return None
    reader = EngineOutputReader(socket, asyncio.get_running_loop())
    socket.recv_multipart = reader.recv_multipart
    return reader

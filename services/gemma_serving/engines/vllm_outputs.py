"""The replica's read of vLLM's engine-core output socket: a plain non-blocking ZeroMQ read on the event loop's own
readiness callback instead of pyzmq's asyncio futures.

vLLM's front end (`AsyncMPClient`, 0.32) reads every engine step's outputs with `await output_socket.recv_multipart()`
on a `zmq.asyncio` socket. pyzmq makes that a future per message, re-arms its poll state twice and asks the socket
for its events four times; on the dev VM that costs 40-50 µs of CPU per message more than draining the socket with
`NOBLOCK` reads and waiting on its file descriptor (`bench/channel_transport.py`, zmq against zmq-direct-read), once per engine step, which at
c=1 is once per token. Only the one task that reads the socket changes; what it reads is the same.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import zmq
import zmq.asyncio

log = logging.getLogger(__name__)


class EngineOutputReader:
    """`recv_multipart` for the single task that reads a `zmq.asyncio` socket: messages already queued are taken at
    once; otherwise it waits for the socket's file descriptor, watched by one reader callback for its life."""

    __slots__ = ("_socket", "_async_socket", "_loop", "_waiter", "_watching", "messages")

    def __init__(self, socket: zmq.asyncio.Socket, loop: asyncio.AbstractEventLoop) -> None:
        self._async_socket = socket
        self._socket = zmq.Socket.shadow(socket.underlying)  # the same socket, synchronous calls
        self._loop = loop
        self._waiter: asyncio.Future | None = None
        self._watching = False
        #: Messages read (describe(), tests).
        self.messages = 0

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
            if not self._watching:
                self._watch()
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

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

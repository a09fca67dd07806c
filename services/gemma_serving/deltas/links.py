"""A TCP connection this process opens to a peer's server: a replica's to a router's delta channel
(deltas/publisher.py), a router's to a replica's direct calls (deltas/calls.py)."""

from __future__ import annotations

import asyncio

from gemma_serving.deltas.wire import parse_channel_address

#: A connection attempt that takes longer fails (a node that vanished answers nothing: no kernel-length wait).
CONNECT_TIMEOUT_S = 5.0


class OutboundLink(asyncio.Protocol):
    """One peer's connection, made on `loop`: at most one attempt at a time, each bounded by CONNECT_TIMEOUT_S;
    `close` ends it for good. Subclasses say what a made connection and a failed attempt mean."""

    def __init__(self, address: str, loop: asyncio.AbstractEventLoop) -> None:
        self.address, self.loop = address, loop
        self._host, self._port = parse_channel_address(address)
        self.transport: asyncio.Transport | None = None
        self._connecting: asyncio.Task | None = None
        self._closed = False

    def _start_connecting(self, name: str) -> None:
        if self._connecting is None and not self._closed:
            self._connecting = self.loop.create_task(self._connect(), name=name)

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self.loop.create_connection(lambda: self, self._host, self._port)
        except OSError as exc:  # TimeoutError included
            self._connect_failed(exc)
        finally:
            self._connecting = None

    def _connect_failed(self, exc: OSError) -> None:
        """An attempt failed (the peer cannot be reached)."""

    def _connected(self) -> None:
        """The connection is up (`transport` is set)."""

    def connection_made(self, transport) -> None:
        if self._closed:
            transport.close()
            return
        self.transport = transport
        self._connected()

    def connection_lost(self, exc) -> None:
        self.transport = None

    def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self.transport is not None and not self.loop.is_closed():
            self.transport.close()
        self.transport = None

"""The router's end of the channel: one TCP port every replica pushes to, deltas handed to per-stream inboxes."""

from __future__ import annotations

import asyncio
import logging
import secrets

import msgspec

from gemma_serving.deltas.wire import MAX_MESSAGE_BYTES, Delta, FramedConnection, channel_address, decoder

log = logging.getLogger(__name__)


class Inbox:
    """Deltas of one stream that arrived and are not yet taken; `take` waits for some (or for an interrupt)."""

    __slots__ = ("stream", "pending", "interrupted", "_waiter")

    def __init__(self, stream: int) -> None:
        self.stream = stream
        self.pending: list[Delta] = []
        #: Set (with a reason the relay reads) when something other than a delta needs the consumer's attention.
        self.interrupted: object = None
        self._waiter: asyncio.Future | None = None

    def put(self, delta: Delta) -> None:
        self.pending.append(delta)
        self._wake()

    def interrupt(self, reason: object) -> None:
        if self.interrupted is None:
            self.interrupted = reason
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> list[Delta]:
        """Every pending delta (possibly none, when interrupted)."""
        while not self.pending and self.interrupted is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        taken, self.pending = self.pending, []
        return taken


class DeltaSubscriber:
    """Listens on `bind_host` (port 0: any free one) for replicas' channel connections (plain TCP, one per replica)
    and dispatches every delta to its stream's inbox.

    `address` is what replicas connect to: `advertise_host` (this node's address as other nodes see it) and the port.
    Plain TCP on the event loop, not ZeroMQ: a message is read by this loop's own epoll wake, with no I/O thread
    to hand it over (~75 against ~275 us of CPU per message arriving 20 ms apart on the dev VM: README, the token
    path).
    """

    def __init__(self, bind_host: str, advertise_host: str, port: int = 0) -> None:
        self._bind_host, self._advertise_host, self._port = bind_host, advertise_host, port
        self._inboxes: dict[int, Inbox] = {}
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Transport] = set()
        self._decode = decoder().decode
        self.address = ""
        self.messages_received = 0

    async def start(self) -> None:
        host = None if self._bind_host in ("0.0.0.0", "::") else self._bind_host
        self._server = await asyncio.get_running_loop().create_server(
            lambda: FramedConnection(self._dispatch, self._connections, MAX_MESSAGE_BYTES, "delta channel"), host,
            self._port)
        port = self._server.sockets[0].getsockname()[1]
        self.address = channel_address(self._advertise_host, port)

    def open(self) -> Inbox:
        """A new stream with an unguessable id; `close` it when done."""
        stream = secrets.randbits(63)
        inbox = self._inboxes[stream] = Inbox(stream)
        return inbox

    def close(self, inbox: Inbox) -> None:
        self._inboxes.pop(inbox.stream, None)

    @property
    def open_streams(self) -> int:
        return len(self._inboxes)

    def _dispatch(self, message: bytes | memoryview) -> None:
        self.messages_received += 1
        try:
            deltas = self._decode(message)
        except msgspec.MsgspecError as exc:
            log.warning("dropped a malformed delta message (%d bytes): %s", len(message), type(exc).__name__)
            return
        inboxes = self._inboxes
        for delta in deltas:
            inbox = inboxes.get(delta.stream)
            if inbox is not None:  # else: a stream given up already (cancelled, timed out, retried)
                inbox.put(delta)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in list(self._connections):
            transport.close()
        for inbox in list(self._inboxes.values()):
            inbox.interrupt("closed")

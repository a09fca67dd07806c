"""The router's end of the channel: one PULL socket every replica pushes to, deltas handed to per-stream inboxes."""

from __future__ import annotations

import asyncio
import logging
import secrets

import msgspec

from gemma_serving.deltas.sockets import listen
from gemma_serving.deltas.wire import Delta, decoder

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
    """Binds a PULL socket on `bind_host` (port 0: any free one) and dispatches every delta to its stream's inbox.

    `address` is what replicas connect to: `advertise_host` (this node's address as other nodes see it) and the port.
    """

    def __init__(self, bind_host: str, advertise_host: str, port: int = 0) -> None:
        self._bind_host, self._advertise_host, self._port = bind_host, advertise_host, port
        self._inboxes: dict[int, Inbox] = {}
        self._socket = None
        self._task: asyncio.Task | None = None
        self.address = ""
        self.messages_received = 0

    async def start(self) -> None:
        self._socket, self.address = listen(self._bind_host, self._advertise_host, self._port)
        self._task = asyncio.create_task(self._read(), name="delta-subscriber")

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

    async def _read(self) -> None:
        decode = decoder().decode
        inboxes = self._inboxes
        recv = self._socket.recv
        while True:
            message = await recv()
            self.messages_received += 1
            try:
                deltas = decode(message)
            except msgspec.MsgspecError as exc:
                log.warning("dropped a malformed delta message (%d bytes): %s", len(message), type(exc).__name__)
                continue
            for delta in deltas:
                inbox = inboxes.get(delta.stream)
                if inbox is not None:  # else: a stream given up already (cancelled, timed out, retried)
                    inbox.put(delta)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for inbox in list(self._inboxes.values()):
            inbox.interrupt("closed")
        if self._socket is not None:
            self._socket.close()

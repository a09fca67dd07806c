"""Direct calls: a router hands a request to a replica it chose over one TCP connection, without a Ray Serve handle
call.

A Serve handle call costs ~2.7 ms of CPU per request across router and replica here (routing, actor-call submission,
pickling, the replica's request wrapper, two result items): at 64 tokens per request that alone is more than vLLM's
API server spends per token. A direct call costs one small message each way: START (the request) to the replica's
`CallServer`, and the request's deltas back over the delta channel, its last delta ending the call (or carrying its
error). CANCEL aborts it. The Serve handle call remains the path for everything a router cannot decide itself
(routers fall back to it): no replica known yet (scale from zero), all known replicas at capacity (Serve queues,
applies backpressure and sees the demand for autoscaling), LoRA adapters (Serve's multiplexed routing), retries.

The transport is a plain TCP connection per router and replica, its messages length-framed (deltas/wire.py) and
read and written on the event loops themselves, like the delta channel: a ZeroMQ socket hands every message to and
from its I/O thread, a thread wake on each side per request (README, the token path).

Messages are HMAC-SHA256-signed with the app's shared secret (`deltas/registry.py`) and the request is a pickle: only
a holder of the secret (a process of this Ray cluster) can make a replica unpickle anything, the same trust Ray's own
actor calls need. A message with a wrong signature is dropped unread.

Replica loss: a replica process that dies closes its connections (the kernel does), and TCP keepalives every second
end a connection to a node that vanished within ~3 s, as ZMTP heartbeats did; the router then fails the calls in
flight on it, so they end UNAVAILABLE, or go again through Serve when they had produced nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import pickle
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from gemma_serving.deltas.links import OutboundLink
from gemma_serving.deltas.wire import FramedConnection, channel_address, frame
from gemma_serving.errors import ReplicaGone

log = logging.getLogger(__name__)

START, CANCEL = 0, 1
_MAC = 32  # HMAC-SHA256
_HEAD = struct.Struct("!BQH")  # message kind, stream id, length of the reply address
#: Keepalive probes on a router's replica connections: a replica whose node vanished (no TCP reset) is dropped after
#: KEEPALIVE_IDLE_S + KEEPALIVE_PROBES * KEEPALIVE_INTERVAL_S of silence, or USER_TIMEOUT_MS with a call unacknowledged.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES, USER_TIMEOUT_MS = 1, 1, 2, 3000
#: Reconnection attempts to a replica that went away back off to this (its link closes once the router forgets it).
RECONNECT_MAX_S = 5.0
#: The largest call a replica reads (a request with its media); a router sends a larger one through Serve.
MAX_CALL_BYTES = 1 << 30
#: Bytes of calls waiting for one replica that stopped reading, beyond which new calls go through Serve.
MAX_BUFFERED_BYTES = 64 << 20


class CallSigner:
    """Signs and verifies call messages (signature, head, reply address, body) with the app's secret."""

    def __init__(self, secret: bytes) -> None:
        self._key = secret

    def pack(self, kind: int, stream: int, reply_address: str = "", body: bytes = b"") -> bytes:
        address = reply_address.encode()
        signed = b"".join((_HEAD.pack(kind, stream, len(address)), address, body))
        return hmac.digest(self._key, signed, "sha256") + signed

    def unpack(self, message: bytes | memoryview) -> tuple[int, int, str, memoryview] | None:
        """(kind, stream, reply address, body: a view, not a copy), or None for a message that is not ours (shape
        or signature)."""
        if len(message) < _MAC + _HEAD.size:
            return None
        message = memoryview(message)
        signed = message[_MAC:]
        if not hmac.compare_digest(message[:_MAC], hmac.digest(self._key, signed, "sha256")):
            return None
        kind, stream, length = _HEAD.unpack_from(signed)
        address = signed[_HEAD.size:_HEAD.size + length]
        if len(address) != length:
            return None
        return kind, stream, bytes(address).decode(errors="replace"), signed[_HEAD.size + length:]


#: Runs one direct call on the replica: (request, request_id, reply address, stream) -> done.
CallHandler = Callable[[Any, str, str, int], Awaitable[None]]
#: Answers a signed call whose request could not be read (a version skew): (reply address, stream).
CallRefuser = Callable[[str, int], None]


class CallServer:
    """The replica's end: a TCP server; each START runs `handler` as a task, each CANCEL cancels its task."""

    def __init__(self, signer: CallSigner, handler: CallHandler, refuse: CallRefuser, bind_host: str,
                 advertise_host: str) -> None:
        self._signer, self._handler, self._refuse = signer, handler, refuse
        self._bind_host, self._advertise_host = bind_host, advertise_host
        self._tasks: dict[int, asyncio.Task] = {}
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Transport] = set()
        self.address = ""
        self.dropped = 0  # messages refused unread (bad signature or shape)
        self.started = 0  # calls taken

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        host = None if self._bind_host in ("0.0.0.0", "::") else self._bind_host
        self._server = await asyncio.get_running_loop().create_server(
            lambda: FramedConnection(self._receive, self._connections, MAX_CALL_BYTES, "direct-call"), host, 0)
        self.address = channel_address(self._advertise_host, self._server.sockets[0].getsockname()[1])

    def _receive(self, raw: bytes | memoryview) -> None:
        message = self._signer.unpack(raw)
        if message is None:
            self.dropped += 1
            log.warning("dropped a direct-call message with a bad signature or shape")
            return
        kind, stream, address, body = message
        if kind == START and stream not in self._tasks:
            try:
                request, request_id = pickle.loads(body)
            except Exception:  # noqa: BLE001 - signed but unreadable: a version skew during an upgrade
                log.warning("refused a direct call that could not be read", exc_info=True)
                self._refuse(address, stream)  # the router sends it through Serve instead
                return
            self.started += 1
            task = asyncio.get_running_loop().create_task(self._handler(request, request_id, address, stream))
            self._tasks[stream] = task
            task.add_done_callback(lambda _, s=stream: self._tasks.pop(s, None))
        elif kind == CANCEL:
            task = self._tasks.get(stream)
            if task is not None:
                task.cancel()

    async def drain(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for the calls in flight; returns how many were still running (then cancelled)."""
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        left = [t for t in tasks if not t.done()]
        for task in left:
            task.cancel()
        return len(left)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in list(self._connections):
            transport.close()
        for task in list(self._tasks.values()):
            task.cancel()


class DirectCall:
    """A started direct call (the relay's PendingCall): awaiting it waits for a failure of the transport (the
    replica's connection dropped); the stream's deltas say everything else. `finish` when its stream ended."""

    __slots__ = ("_client", "address", "stream", "_future")

    def __init__(self, client: CallClient, address: str, stream: int) -> None:
        self._client, self.address, self.stream = client, address, stream
        self._future = asyncio.get_running_loop().create_future()

    def __await__(self):
        return self._future.__await__()

    def fail(self, error: BaseException) -> None:
        if not self._future.done():
            self._future.set_exception(error)
        self._client._forget(self)

    def finish(self) -> None:
        if not self._future.done():
            self._future.set_result(None)
        self._client._forget(self)

    def cancel(self) -> None:
        """Abort the call: the replica cancels its task, which aborts the engine request."""
        if not self._future.done():
            self._client._send(self.address, self._client.signer.pack(CANCEL, self.stream))
            self._future.cancel()
        self._client._forget(self)


def keep_alive(sock: socket.socket) -> None:
    """Probe an idle connection every second and give up after KEEPALIVE_PROBES unanswered (Linux options where
    the platform has them)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                        ("TCP_KEEPCNT", KEEPALIVE_PROBES), ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class _ReplicaLink(OutboundLink):
    """The router's connection to one replica: connected, or (re)connecting with backoff when asked."""

    def __init__(self, client: CallClient, address: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(address, loop)
        self._client = client
        self.calls: dict[int, DirectCall] = {}
        self._retry_at = 0.0
        self._backoff = 0.0

    def ensure(self) -> None:
        """Start a connection attempt unless connected, connecting or backing off after a failed one."""
        if self.transport is None and self.loop.time() >= self._retry_at:
            self._start_connecting("direct-call-connect")

    def send(self, message: bytes) -> bool:
        """Write one call message; False when it cannot go now (not connected, too large, or the replica stopped
        reading: more than MAX_BUFFERED_BYTES wait for it)."""
        transport = self.transport
        if transport is None or len(message) > MAX_CALL_BYTES or \
                transport.get_write_buffer_size() + len(message) > MAX_BUFFERED_BYTES:
            return False
        transport.write(frame(message))
        return True

    def _connect_failed(self, exc: OSError) -> None:
        self._backoff = min(max(2 * self._backoff, 0.1), RECONNECT_MAX_S)
        self._retry_at = self.loop.time() + self._backoff
        log.debug("could not connect to replica %s: %s", self.address, type(exc).__name__)

    def _connected(self) -> None:
        keep_alive(self.transport.get_extra_info("socket"))
        self._backoff = 0.0

    def data_received(self, data: bytes) -> None:
        pass  # a replica sends nothing on this connection (deltas take the channel)

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        self._client._fail_all(self)

    def close(self) -> None:
        super().close()  # connection_lost fails its calls too, later
        self._client._fail_all(self)


class CallClient:
    """The router's end: one TCP connection per replica address."""

    def __init__(self, signer: CallSigner) -> None:
        self.signer = signer
        self._replicas: dict[str, _ReplicaLink] = {}

    def connect(self, address: str) -> None:
        """Open the connection to a replica (again, after it dropped); it is usable when `connected` says so."""
        link, loop = self._replicas.get(address), asyncio.get_running_loop()
        if link is None or link.loop is not loop:
            if link is not None:  # made on another event loop (tests run one per test): that loop's transport is gone
                link.close()
            link = self._replicas[address] = _ReplicaLink(self, address, loop)
        link.ensure()

    def _fail_all(self, link: _ReplicaLink) -> None:
        calls = list(link.calls.values())
        link.calls.clear()
        if calls:
            log.warning("lost the connection to replica %s: %d direct calls fail", link.address, len(calls))
        for call in calls:
            call.fail(ReplicaGone("the replica serving this request went away; retry", retry_after_s=1.0))

    def connected(self, address: str) -> bool:
        link = self._replicas.get(address)
        return link is not None and link.transport is not None

    def in_flight(self, address: str) -> int:
        link = self._replicas.get(address)
        return len(link.calls) if link is not None else 0

    def start(self, address: str, request: Any, request_id: str, reply_address: str, stream: int) -> DirectCall | None:
        """Send `request` to the replica at `address`; None when it cannot take a message now (not connected,
        not reading, or a request too large for a call)."""
        link = self._replicas.get(address)
        if link is None or link.transport is None:
            return None
        body = pickle.dumps((request, request_id), protocol=pickle.HIGHEST_PROTOCOL)
        if not link.send(self.signer.pack(START, stream, reply_address, body)):
            return None
        call = link.calls[stream] = DirectCall(self, address, stream)
        return call

    def _send(self, address: str, message: bytes) -> bool:
        link = self._replicas.get(address)
        return link is not None and link.send(message)

    def _forget(self, call: DirectCall) -> None:
        link = self._replicas.get(call.address)
        if link is not None:
            link.calls.pop(call.stream, None)

    def disconnect(self, address: str) -> None:
        """Close the connection to a replica that left (its calls fail as if it had died)."""
        link = self._replicas.pop(address, None)
        if link is not None:
            link.close()

    @property
    def addresses(self) -> list[str]:
        return list(self._replicas)

    def close(self) -> None:
        for address in list(self._replicas):
            self.disconnect(address)

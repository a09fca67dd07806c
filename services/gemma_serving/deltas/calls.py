"""Direct calls: a router hands a request to a replica it chose over ZeroMQ, without a Ray Serve handle call.

A Serve handle call costs ~2.7 ms of CPU per request across router and replica here (routing, actor-call submission,
pickling, the replica's request wrapper, two result items): at 64 tokens per request that alone is more than vLLM's
API server spends per token. A direct call costs one small message each way: START (the request) to the replica's
`CallServer`, and the request's deltas back over the delta channel, its last delta ending the call (or carrying its
error). CANCEL aborts it. The Serve handle call remains the path for everything a router cannot decide itself
(routers fall back to it): no replica known yet (scale from zero), all known replicas at capacity (Serve queues,
applies backpressure and sees the demand for autoscaling), LoRA adapters (Serve's multiplexed routing), retries.

Messages are HMAC-SHA256-signed with the app's shared secret (`deltas/registry.py`) and the request is a pickle: only
a holder of the secret (a process of this Ray cluster) can make a replica unpickle anything, the same trust Ray's own
actor calls need. A message with a wrong signature is dropped unread.

Replica loss: the router watches each replica socket (ZeroMQ monitor events; ZMTP heartbeats catch a lost node) and
fails the calls in flight on a replica whose connection dropped, so they end UNAVAILABLE, or go again through Serve
when they had produced nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import pickle
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from gemma_serving.deltas.sockets import listen
from gemma_serving.errors import ReplicaGone

log = logging.getLogger(__name__)

START, CANCEL = 0, 1
_HEAD = struct.Struct("!BQ")  # message kind, stream id
#: ZMTP heartbeats on a router's replica sockets: a replica whose node vanished (no TCP reset) is dropped after this.
HEARTBEAT_IVL_MS, HEARTBEAT_TIMEOUT_MS = 1000, 3000
#: Reconnection attempts to a replica that went away back off to this (its socket closes once the router forgets it).
RECONNECT_IVL_MAX_MS = 5000


class CallSigner:
    """Signs and verifies call messages (frames: signature, head, reply address, body) with the app's secret."""

    def __init__(self, secret: bytes) -> None:
        self._key = secret

    def pack(self, kind: int, stream: int, reply_address: str = "", body: bytes = b"") -> list[bytes]:
        head, address = _HEAD.pack(kind, stream), reply_address.encode()
        return [hmac.digest(self._key, b"".join((head, address, b"\0", body)), "sha256"), head, address, body]

    def unpack(self, frames: list[bytes]) -> tuple[int, int, str, bytes] | None:
        """(kind, stream, reply address, body), or None for a message that is not ours (shape or signature)."""
        if len(frames) != 4 or len(frames[1]) != _HEAD.size:
            return None
        mac, head, address, body = frames
        if not hmac.compare_digest(mac, hmac.digest(self._key, b"".join((head, address, b"\0", body)), "sha256")):
            return None
        kind, stream = _HEAD.unpack(head)
        return kind, stream, address.decode(), body


#: Runs one direct call on the replica: (request, request_id, reply address, stream) -> done.
CallHandler = Callable[[Any, str, str, int], Awaitable[None]]
#: Answers a signed call whose request could not be read (a version skew): (reply address, stream).
CallRefuser = Callable[[str, int], None]


class CallServer:
    """The replica's end: one PULL socket; each START runs `handler` as a task, each CANCEL cancels its task."""

    def __init__(self, signer: CallSigner, handler: CallHandler, refuse: CallRefuser, bind_host: str,
                 advertise_host: str) -> None:
        self._signer, self._handler, self._refuse = signer, handler, refuse
        self._bind_host, self._advertise_host = bind_host, advertise_host
        self._tasks: dict[int, asyncio.Task] = {}
        self._socket = None
        self._reader: asyncio.Task | None = None
        self.address = ""
        self.dropped = 0  # messages refused unread (bad signature or shape)
        self.started = 0  # calls taken

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        self._socket, self.address = listen(self._bind_host, self._advertise_host)
        self._reader = asyncio.create_task(self._read(), name="direct-call-server")

    async def _read(self) -> None:
        recv, unpack = self._socket.recv_multipart, self._signer.unpack
        while True:
            message = unpack(await recv())
            if message is None:
                self.dropped += 1
                log.warning("dropped a direct-call message with a bad signature or shape")
                continue
            kind, stream, address, body = message
            if kind == START and stream not in self._tasks:
                try:
                    request, request_id = pickle.loads(body)
                except Exception:  # noqa: BLE001 - signed but unreadable: a version skew during an upgrade
                    log.warning("refused a direct call that could not be read", exc_info=True)
                    self._refuse(address, stream)  # the router sends it through Serve instead
                    continue
                self.started += 1
                task = asyncio.create_task(self._handler(request, request_id, address, stream))
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
        if self._reader is not None:
            self._reader.cancel()
        for task in list(self._tasks.values()):
            task.cancel()
        if self._socket is not None:
            self._socket.close()


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


class _ReplicaSocket:
    __slots__ = ("socket", "sender", "connected", "calls", "watcher")

    def __init__(self, socket) -> None:
        self.socket = socket
        self.sender = zmq.Socket.shadow(socket.underlying)  # the same socket, sending synchronously (NOBLOCK)
        self.connected = False
        self.calls: dict[int, DirectCall] = {}
        self.watcher: asyncio.Task | None = None


class CallClient:
    """The router's end: one PUSH socket per replica address, watched for (dis)connection."""

    def __init__(self, signer: CallSigner) -> None:
        self.signer = signer
        self._replicas: dict[str, _ReplicaSocket] = {}

    def connect(self, address: str) -> None:
        """Open (once) the socket to a replica; it is usable when `connected` says so."""
        if address in self._replicas:
            return
        sock = zmq.asyncio.Context.instance().socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue a call for a peer that is not connected
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)  # a replica that is gone: back off, not spin
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(address)
        replica = self._replicas[address] = _ReplicaSocket(sock)
        replica.watcher = asyncio.create_task(self._watch(address, replica, monitor), name="direct-call-monitor")

    async def _watch(self, address: str, replica: _ReplicaSocket, monitor) -> None:
        try:
            while True:
                event = parse_monitor_message(await monitor.recv_multipart())["event"]
                if event == zmq.EVENT_CONNECTED:
                    replica.connected = True
                elif event == zmq.EVENT_DISCONNECTED:
                    replica.connected = False
                    self._fail_all(replica, address)
        finally:
            monitor.close()

    def _fail_all(self, replica: _ReplicaSocket, address: str) -> None:
        calls = list(replica.calls.values())
        if calls:
            log.warning("lost the connection to replica %s: %d direct calls fail", address, len(calls))
        for call in calls:
            call.fail(ReplicaGone("the replica serving this request went away; retry", retry_after_s=1.0))

    def connected(self, address: str) -> bool:
        replica = self._replicas.get(address)
        return replica is not None and replica.connected

    def in_flight(self, address: str) -> int:
        replica = self._replicas.get(address)
        return len(replica.calls) if replica is not None else 0

    def start(self, address: str, request: Any, request_id: str, reply_address: str, stream: int) -> DirectCall | None:
        """Send `request` to the replica at `address`; None when it cannot take a message now (not connected)."""
        replica = self._replicas.get(address)
        if replica is None or not replica.connected:
            return None
        body = pickle.dumps((request, request_id), protocol=pickle.HIGHEST_PROTOCOL)
        if not self._send(address, self.signer.pack(START, stream, reply_address, body)):
            return None
        call = replica.calls[stream] = DirectCall(self, address, stream)
        return call

    def _send(self, address: str, frames: list[bytes]) -> bool:
        replica = self._replicas.get(address)
        if replica is None:
            return False
        try:
            replica.sender.send_multipart(frames, zmq.NOBLOCK)
            return True
        except zmq.ZMQError:  # zmq.Again: not connected (IMMEDIATE) or its queue is full
            return False

    def _forget(self, call: DirectCall) -> None:
        replica = self._replicas.get(call.address)
        if replica is not None:
            replica.calls.pop(call.stream, None)

    def disconnect(self, address: str) -> None:
        """Close the socket to a replica that left (its calls fail as if it had died)."""
        replica = self._replicas.pop(address, None)
        if replica is None:
            return
        self._fail_all(replica, address)
        if replica.watcher is not None:
            replica.watcher.cancel()
        replica.socket.disable_monitor()
        replica.socket.close()

    @property
    def addresses(self) -> list[str]:
        return list(self._replicas)

    def close(self) -> None:
        for address in list(self._replicas):
            self.disconnect(address)

"""The direct-call transport (deltas/calls.py: signed messages over one TCP connection per router and replica) over
real loopback sockets: calls and cancels arrive in order, a dropped connection fails the router's calls and is made
again on the next connect, keepalives are on, a peer that is not a router is cut off without hurting others, and a
replica that stopped reading gets no more calls (they go through Serve)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from gemma_serving.deltas import calls
from gemma_serving.deltas.calls import MAX_CALL_BYTES, CallClient, CallServer, CallSigner
from gemma_serving.errors import ReplicaGone

SECRET = b"s" * 32


class Replica:
    """A CallServer whose handler records each call and waits until cancelled or released."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.cancelled: list[int] = []
        self.refused: list[int] = []
        self.release = asyncio.Event()
        self.server = CallServer(CallSigner(SECRET), self._handle, lambda _a, s: self.refused.append(s),
                                 "127.0.0.1", "127.0.0.1")

    async def _handle(self, request, request_id: str, address: str, stream: int) -> None:
        self.calls.append((request_id, stream))
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(stream)
            raise


async def _eventually(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


@pytest.fixture
async def pair():
    replica = Replica()
    await replica.server.start()
    client = CallClient(CallSigner(SECRET))
    client.connect(replica.server.address)
    await _eventually(lambda: client.connected(replica.server.address))
    yield replica, client
    client.close()
    replica.server.close()


async def test_calls_and_cancels_arrive_in_order_on_one_connection(pair):
    replica, client = pair
    address = replica.server.address
    started = [client.start(address, {"n": i}, f"r{i}", "tcp://127.0.0.1:1", i) for i in range(50)]
    assert all(c is not None for c in started) and client.in_flight(address) == 50
    await _eventually(lambda: len(replica.calls) == 50)
    for call in started[::2]:
        call.cancel()
    await _eventually(lambda: len(replica.cancelled) == 25)
    assert replica.calls == [(f"r{i}", i) for i in range(50)]
    assert sorted(replica.cancelled) == list(range(0, 50, 2)) and client.in_flight(address) == 25
    assert len(replica.server._connections) == 1  # one connection carried all of them


async def test_a_dropped_connection_fails_the_calls_on_it_and_the_next_connect_makes_it_again(pair):
    replica, client = pair
    address = replica.server.address
    call = client.start(address, {}, "r", "tcp://127.0.0.1:1", 1)
    await _eventually(lambda: replica.calls)
    for transport in list(replica.server._connections):  # the replica end goes away, its port stays open
        transport.close()
    with pytest.raises(ReplicaGone):
        await asyncio.wait_for(call, 5)
    assert not client.connected(address) and client.start(address, {}, "r2", "", 2) is None
    client.connect(address)  # what the router's next directory refresh does
    await _eventually(lambda: client.connected(address))
    assert client.start(address, {}, "r3", "", 3) is not None
    await _eventually(lambda: ("r3", 3) in replica.calls)


async def test_a_connection_attempt_that_fails_backs_off():
    with socket.socket() as held:  # a port nothing listens on
        held.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{held.getsockname()[1]}"
    client = CallClient(CallSigner(SECRET))
    try:
        client.connect(address)
        link = client._replicas[address]
        await _eventually(lambda: link._connecting is None)
        assert not client.connected(address) and link._retry_at > asyncio.get_running_loop().time()
        client.connect(address)  # inside the backoff: no new attempt
        assert link._connecting is None
    finally:
        client.close()


async def test_router_connections_probe_an_idle_peer_every_second(pair):
    replica, client = pair
    sock = client._replicas[replica.server.address].transport.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    if hasattr(socket, "TCP_KEEPIDLE"):
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == calls.KEEPALIVE_IDLE_S
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == calls.KEEPALIVE_PROBES
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == calls.USER_TIMEOUT_MS


async def test_a_peer_that_is_not_a_router_is_cut_off_and_routers_are_still_served(pair):
    replica, client = pair
    host, port = replica.server.address[len("tcp://"):].rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f")  # a ZMTP greeting: a length far above the limit
    await _eventually(lambda: len(replica.server._connections) == 1)  # that connection closed, the router's stays
    assert replica.server.dropped == 0 and (0xFF000000 > MAX_CALL_BYTES)
    assert client.start(replica.server.address, {}, "ok", "", 5) is not None
    await _eventually(lambda: ("ok", 5) in replica.calls)
    writer.close()


async def test_a_replica_that_stopped_reading_gets_no_more_calls(pair, monkeypatch):
    replica, client = pair
    address = replica.server.address
    monkeypatch.setattr(calls, "MAX_BUFFERED_BYTES", 1 << 20)
    for transport in replica.server._connections:
        transport.pause_reading()  # a wedged replica: the kernel's buffers fill, then the router's
    body = b"x" * (256 << 10)
    sent = 0
    while client.start(address, body, f"big{sent}", "", sent) is not None:
        sent += 1
        assert sent < 1000, "the router kept queueing calls for a replica that reads nothing"
    assert client._replicas[address].transport.get_write_buffer_size() <= 1 << 20
    assert client.in_flight(address) == sent


async def test_a_request_too_large_for_a_call_is_not_sent(pair, monkeypatch):
    replica, client = pair
    monkeypatch.setattr(calls, "MAX_CALL_BYTES", 64 << 10)
    assert client.start(replica.server.address, b"x" * (128 << 10), "big", "", 1) is None  # Serve carries it
    assert client.start(replica.server.address, b"x" * 100, "small", "", 2) is not None
    await _eventually(lambda: ("small", 2) in replica.calls)
    assert replica.calls == [("small", 2)] and client.in_flight(replica.server.address) == 1

"""Direct calls (deltas/calls.py) between a real DeltaChannelBackend and a real ModalityDeployment over loopback
TCP, the replica directory in an in-memory key-value store instead of Ray's: requests go direct, fall back to
the Serve path when refused, cancel reaches the engine, a replica that drops its connection fails its calls, errors
come back typed, and an unsigned message is never read."""

from __future__ import annotations

import asyncio

import pytest
from gemma_serving.config import ServiceConfig, ServiceKind
from gemma_serving.deltas.calls import START, CallClient, CallSigner
from gemma_serving.deltas.registry import ReplicaAnnouncement, ReplicaDirectory, shared_secret
from gemma_serving.deltas.subscriber import DeltaSubscriber
from gemma_serving.deployments.autoscaling import DIRECT_IN_FLIGHT
from gemma_serving.deployments.direct_calls import DirectCalls
from gemma_serving.engines.fake import FakeEngine
from gemma_serving.engines.sampling import Sampling
from gemma_serving.engines.types import GenerationRequest, Message, TextPart
from gemma_serving.errors import InvalidRequest, ReplicaGone
from gemma_serving.router.backends import DeltaChannelBackend
from gemma_serving.router.direct_routes import DirectRoutes

from tests.unit.conftest import make_deployment

TEXT = ServiceKind.TEXT


async def _eventually(condition, tries: int = 200) -> None:
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.01)


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def put(self, key: str, value: bytes, overwrite: bool = True) -> None:
        if overwrite or key not in self.data:
            self.data[key] = value

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def keys(self, prefix: str) -> list[str]:
        return [k for k in self.data if k.startswith(prefix)]


def request(max_tokens: int = 8, adapter: str = "") -> GenerationRequest:
    return GenerationRequest("text-model", (Message("user", (TextPart("hi"),)),), Sampling(max_tokens=max_tokens),
                             adapter=adapter)


class Platform:
    """One text replica taking direct calls and a router backend whose Serve path is recorded."""

    async def start(self, *, max_ongoing: int = 32, step_delay_s: float = 0.005) -> Platform:
        service = ServiceConfig.model_validate({
            "model": {"name": "text-model", "source": "/m/t", "max_output_tokens": 100, "default_max_tokens": 64},
            "deployment": {"stream_flush_ms": 0, "max_ongoing_requests": max_ongoing}})
        self.engine = FakeEngine(step_delay_s=step_delay_s)
        self.deployment = await make_deployment(TEXT, service, self.engine)
        self.store = MemoryStore()
        secret = shared_secret(self.store, "app")
        self.calls = DirectCalls(self.deployment.stream_into, self.deployment._publisher,
                                 self.deployment._admits_direct_call)
        await self.calls.start(CallSigner(secret), "127.0.0.1",
                               lambda address: ReplicaAnnouncement(self.store, "app", "text", "r1", address))
        self.deployment._direct = self.calls
        self.routes = DirectRoutes(CallClient(CallSigner(secret)), ReplicaDirectory(self.store, "app"), {TEXT})
        await self.routes.refresh()
        await _eventually(lambda: self.routes._client.connected(self.calls.address))
        self.subscriber = DeltaSubscriber("127.0.0.1", "127.0.0.1")
        await self.subscriber.start()
        self.serve_calls: list[str] = []
        self.backend = DeltaChannelBackend(self._serve_call, self.subscriber, probe=lambda kind: None,
                                           start_direct=self.routes.start)
        return self

    def _serve_call(self, kind, req, request_id, address, stream):
        self.serve_calls.append(request_id)
        return asyncio.ensure_future(self.deployment.generate_into(req, request_id, address, stream))

    async def text(self, req: GenerationRequest, request_id: str = "r") -> str:
        return "".join([c.text async for c in self.backend.stream(TEXT, req, request_id)])

    async def stop(self) -> None:
        self.routes.close()
        self.calls.close()
        await self.subscriber.stop()


@pytest.fixture
async def platform():
    p = await Platform().start()
    yield p
    await p.stop()


async def test_requests_go_direct_and_arrive_whole(platform):
    texts = await asyncio.gather(*(platform.text(request(5 + i), f"r{i}") for i in range(16)))
    for i, text in enumerate(texts):
        assert text == "".join(f" word{k}" for k in range(5 + i))
    assert platform.serve_calls == []  # no Serve handle call at all
    assert platform.calls.in_flight == 0 and platform.routes._client.in_flight(platform.calls.address) == 0


async def test_adapters_and_unknown_replicas_take_the_serve_path(platform):
    platform.deployment._use_adapter = lambda name: asyncio.sleep(0)
    await platform.text(request(3, adapter="a1"), "lora")
    assert platform.serve_calls == ["lora"]
    platform.store.data.clear()  # the replica withdrew
    await platform.routes.refresh()
    await platform.text(request(3), "after")
    assert platform.serve_calls == ["lora", "after"]


async def test_a_full_replica_refuses_and_serve_queues_the_request():
    p = await Platform().start(max_ongoing=1, step_delay_s=0.02)
    try:
        first = asyncio.ensure_future(p.text(request(10), "first"))
        await asyncio.sleep(0.05)  # first is on the engine: the replica is full
        assert await p.text(request(3), "second") == " word0 word1 word2"
        await first
        assert p.serve_calls == ["second"]  # refused direct, then through Serve (not counted as a retry)
    finally:
        await p.stop()


async def test_cancelling_a_direct_call_aborts_the_engine_request(platform):
    stream = platform.backend.stream(TEXT, request(90), "cancel-me")
    assert (await anext(stream)).text == " word0"
    assert platform.calls.in_flight == 1
    await stream.aclose()  # the client went away
    await _eventually(lambda: not platform.engine.in_flight)
    assert not platform.engine.in_flight and "cancel-me" in platform.engine.aborted
    assert platform.calls.in_flight == 0


async def test_a_replica_that_drops_its_connection_fails_its_streams(platform):
    stream = platform.backend.stream(TEXT, request(90), "lost")
    await anext(stream)
    platform.calls.close()  # the replica process died
    with pytest.raises(ReplicaGone):
        async for _ in stream:
            pass


async def test_before_any_output_a_lost_replica_means_one_retry_through_serve():
    p = await Platform().start(step_delay_s=0.3)
    try:
        task = asyncio.ensure_future(p.text(request(2), "retry-me"))
        await asyncio.sleep(0.1)
        p.calls.close()
        assert await task == " word0 word1"
        assert p.serve_calls == ["retry-me"]
    finally:
        await p.stop()


async def test_replica_errors_come_back_typed(platform):
    async def bad(*_args, **_kwargs):
        raise InvalidRequest("model text-model does not accept audio input", field="messages")
        yield

    platform.deployment._engine_chunks = bad
    with pytest.raises(InvalidRequest) as info:
        await platform.text(request(3), "bad")
    assert info.value.field == "messages" and "audio" in info.value.message
    assert platform.serve_calls == []


async def test_an_unexpected_replica_failure_is_internal_without_its_text(platform):
    async def broken(*_args, **_kwargs):
        raise RuntimeError("secret internals /path/to/file")
        yield

    platform.deployment._engine_chunks = broken
    with pytest.raises(Exception) as info:
        await platform.text(request(3), "broken")
    assert type(info.value).__name__ == "InternalError" and "secret" not in str(info.value)


async def test_messages_without_the_secret_are_dropped_unread(platform):
    forged = CallClient(CallSigner(b"not the secret" * 3))
    forged.connect(platform.calls.address)
    await _eventually(lambda: forged.connected(platform.calls.address))
    forged._send(platform.calls.address, b"x" * 32 + START.to_bytes(1, "big") + (7).to_bytes(8, "big")
                 + (9).to_bytes(2, "big") + b"tcp://x:1" + b"cos\n")
    assert forged.start(platform.calls.address, request(3), "forged", platform.subscriber.address, 9) is not None
    await _eventually(lambda: platform.calls._server.dropped >= 2)
    assert platform.calls._server.dropped == 2 and platform.engine.seen == []
    forged.close()


async def test_replicas_report_direct_calls_to_the_autoscaler(platform):
    stream = platform.backend.stream(TEXT, request(90), "counted")
    await anext(stream)
    assert (await platform.deployment.record_autoscaling_stats())[DIRECT_IN_FLIGHT] == 1.0
    await stream.aclose()


async def test_draining_withdraws_refuses_new_calls_and_lets_running_ones_finish(platform):
    running = asyncio.ensure_future(platform.text(request(20), "running"))
    await asyncio.sleep(0.03)
    drain = asyncio.ensure_future(platform.calls.drain(5))
    await asyncio.sleep(0.01)
    assert platform.store.keys("app/text/") == []
    # The router has not re-read the directory yet: the replica refuses, the request goes through Serve.
    assert await platform.text(request(2), "late") == " word0 word1"
    assert platform.serve_calls == ["late"]
    assert await running == "".join(f" word{k}" for k in range(20))
    await drain


def test_the_directory_drops_replicas_whose_heartbeat_stopped():
    store, now = MemoryStore(), [0.0]
    store.put("app/text/r1", b'{"address": "tcp://a:1", "beat": 1, "protocol": 2}')
    directory = ReplicaDirectory(store, "app", clock=lambda: now[0])
    asyncio.run(directory.refresh())
    assert directory.live("text") == ["tcp://a:1"]
    now[0] = 10.0
    asyncio.run(directory.refresh())  # same beat: not moved for 10 s
    assert directory.live("text") == []
    store.put("app/text/r1", b'{"address": "tcp://a:1", "beat": 2, "protocol": 2}')
    asyncio.run(directory.refresh())
    assert directory.live("text") == ["tcp://a:1"]


def test_routes_count_a_services_live_replicas_for_the_replica_gauge():
    store, now = MemoryStore(), [0.0]
    store.put("app/text/r1", b'{"address": "tcp://a:1", "beat": 1, "protocol": 2}')
    store.put("app/text/r2", b'{"address": "tcp://a:2", "beat": 1, "protocol": 2}')
    routes = DirectRoutes(CallClient(CallSigner(b"k" * 32)), ReplicaDirectory(store, "app", clock=lambda: now[0]),
                          {TEXT})
    try:
        asyncio.run(routes.refresh())
        assert routes.services == {TEXT} and routes.replicas(TEXT) == 2
        now[0] = 10.0
        store.put("app/text/r2", b'{"address": "tcp://a:2", "beat": 2, "protocol": 2}')
        asyncio.run(routes.refresh())
        assert routes.replicas(TEXT) == 1  # r1's heartbeat stopped
    finally:
        routes.close()


def test_replicas_of_another_call_protocol_are_counted_but_never_called():
    """An upgrade runs ZeroMQ-era replicas (no protocol field) beside new ones: routers call only their own kind."""
    store = MemoryStore()
    store.put("app/text/old", b'{"address": "tcp://a:1", "beat": 1}')
    store.put("app/text/new", b'{"address": "tcp://a:2", "beat": 1, "protocol": 2}')
    directory = ReplicaDirectory(store, "app")
    asyncio.run(directory.refresh())
    assert directory.live("text") == ["tcp://a:2"] and directory.all_addresses() == {"tcp://a:2"}
    assert directory.live_count("text") == 2


def test_the_secret_is_made_once_and_shared():
    store = MemoryStore()
    assert shared_secret(store, "app") == shared_secret(store, "app") != shared_secret(store, "other")


async def test_a_signed_call_this_version_cannot_read_is_refused_and_goes_through_serve(platform):
    client = platform.routes._client
    real = client.signer.pack
    client.signer.pack = lambda kind, stream, reply, body=b"": real(kind, stream, reply, b"not a pickle")
    try:
        assert await platform.text(request(3), "skewed") == " word0 word1 word2"
    finally:
        client.signer.pack = real
    assert platform.serve_calls == ["skewed"] and platform.engine.seen[-1].sampling.max_tokens == 3


def test_the_key_of_a_replica_silent_for_a_minute_is_deleted():
    store, now = MemoryStore(), [0.0]
    store.put("app/text/crashed", b'{"address": "tcp://a:1", "beat": 3, "protocol": 2}')
    store.put("app/secret", b"k" * 32)
    directory = ReplicaDirectory(store, "app", clock=lambda: now[0])
    asyncio.run(directory.refresh())
    now[0] = 30.0
    asyncio.run(directory.refresh())
    assert "app/text/crashed" in store.data and directory.all_addresses() == {"tcp://a:1"}
    now[0] = 61.0
    asyncio.run(directory.refresh())
    assert "app/text/crashed" not in store.data and directory.all_addresses() == set()
    assert "app/secret" in store.data  # not a replica's key


async def test_routes_close_the_socket_of_a_forgotten_replica(platform):
    address = platform.calls.address
    assert address in platform.routes._client.addresses
    platform.store.delete("app/text/r1")
    await platform.routes.refresh()
    assert address not in platform.routes._client.addresses

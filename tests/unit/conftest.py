"""Unit-test fixtures: a real grpc.aio router on loopback over FakeEngine (no Ray, no vLLM)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import AsyncIterator

import grpc
import pytest
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.config import ServiceConfig, ServiceKind, parse_config
from gemma_serving.deltas.subscriber import DeltaSubscriber
from gemma_serving.deployments.modality import ModalityDeployment
from gemma_serving.router.backends import DeltaChannelBackend
from gemma_serving.engines.fake import FakeEngine
from gemma_serving.engines.types import Chunk, GenerationRequest
from gemma_serving.router.server import start_grpc_server

#: stream_flush_ms 0: a delta per FakeEngine token, so tests can count chunks (test_token_path.py covers pacing).
PER_TOKEN = {"stream_flush_ms": 0}
CONFIG = {
    "router": {"port": 0},
    "limits": {"max_messages": 4, "max_images": 1, "max_image_pixels": 10_000, "max_audio_seconds": 2},
    "services": {
        "text": {"model": {"name": "text-model", "source": "/m/t", "max_output_tokens": 100, "default_max_tokens": 64},
                 "deployment": PER_TOKEN},
        "vision": {"model": {"name": "vision-model", "source": "/m/v"}, "deployment": PER_TOKEN},
        "audio": {"model": {"name": "audio-model", "source": "/m/a"}, "deployment": PER_TOKEN},
    },
}


class InProcessBackend(DeltaChannelBackend):
    """The router's real token path (replica call + delta channel over loopback TCP) with ModalityDeployment
    objects called in-process (an asyncio task stands in for the Serve handle call; no Ray) over FakeEngines."""

    def __init__(self, deployments: dict[ServiceKind, ModalityDeployment], subscriber: DeltaSubscriber) -> None:
        self.deployments = deployments
        self.engines = {kind: d.engine for kind, d in deployments.items()}
        self.requests: list[GenerationRequest] = []
        self.subscriber = subscriber
        super().__init__(self._start_call, subscriber, probe=lambda kind: self.deployments[kind].check_health())

    @classmethod
    async def create(cls, deployments: dict[ServiceKind, ModalityDeployment]) -> InProcessBackend:
        subscriber = DeltaSubscriber("127.0.0.1", "127.0.0.1")
        await subscriber.start()
        return cls(deployments, subscriber)

    def _start_call(self, kind, request, request_id, address, stream):
        return asyncio.ensure_future(self.deployments[kind].generate_into(request, request_id, address, stream))

    async def stream(self, kind: ServiceKind, request: GenerationRequest, request_id: str) -> AsyncIterator[Chunk]:
        self.requests.append(request)
        async for chunk in super().stream(kind, request, request_id):
            yield chunk


async def make_deployment(kind: ServiceKind, service: ServiceConfig, engine: FakeEngine) -> ModalityDeployment:
    """A ModalityDeployment built outside Ray (its async __init__ is awaited the way Serve does)."""
    deployment = ModalityDeployment.__new__(ModalityDeployment)
    await deployment.__init__(
        kind.value, service.model_dump(mode="json"), engine_factory=lambda *_: engine, checkpoint_resolver=Path
    )
    return deployment


@pytest.fixture
async def subscriber():
    """A router's delta channel end on loopback (real TCP)."""
    sub = DeltaSubscriber("127.0.0.1", "127.0.0.1")
    await sub.start()
    yield sub
    await sub.stop()


@pytest.fixture
def config():
    return parse_config(CONFIG)


async def start_router(config, new_engine=lambda: FakeEngine(step_delay_s=0.005)):
    """A gRPC router in this process over one deployment per configured service, each with `new_engine()`."""
    deployments = {
        kind: await make_deployment(kind, service, new_engine()) for kind, service in config.services.items()
    }
    backend = await InProcessBackend.create(deployments)
    router = await start_grpc_server(config, backend, health_interval_s=0.1)
    backend.router = router
    return router, backend


@pytest.fixture
async def router(config):
    router, backend = await start_router(config)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.port}")
    backend.channel = channel
    yield pb_grpc.InferenceStub(channel), backend
    await channel.close()
    await router.drain_and_stop(0)
    await backend.subscriber.stop()


@pytest.fixture
async def make_router():
    """Start routers with custom config overrides (FakeEngines behind); stopped at teardown."""
    started = []

    async def start(overrides: dict, *, step_delay_s: float = 0.005, merge_late: bool = False):
        router, backend = await start_router(parse_config({**CONFIG, **overrides}),
                                             lambda: FakeEngine(step_delay_s=step_delay_s, merge_late=merge_late))
        started.append((router, backend))
        return router, backend

    yield start
    for router, backend in started:
        await router.drain_and_stop(0)
        await backend.subscriber.stop()


@pytest.fixture
async def client(router, config):
    """The official `openai` client on the router's OpenAI surface (HTTP on loopback), and the backend."""
    import openai
    from gemma_serving.router.openai_http import OpenAISurface, start_http_server

    stub, backend = router
    server, port = await start_http_server(OpenAISurface(config, backend.router.pipeline).app(), "127.0.0.1", 0)
    async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0) as c:
        yield c, backend
    server.should_exit = True
    await server.gemma_task


@pytest.fixture
def request_log():
    """The records the request logger (gemma_serving.requests) writes during the test."""
    logger = logging.getLogger("gemma_serving.requests")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)

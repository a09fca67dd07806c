"""Unit-test fixtures: a real grpc.aio router on loopback over FakeEngine (no Ray, no vLLM)."""

from __future__ import annotations

from typing import AsyncIterator

import grpc
import pytest
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.config import ServiceKind, parse_config
from gemma_serving.engines.fake import FakeEngine
from gemma_serving.engines.types import Chunk, GenerationRequest
from gemma_serving.router.server import start_grpc_server

CONFIG = {
    "router": {"port": 0},
    "limits": {"max_messages": 4, "max_images": 1, "max_image_pixels": 10_000, "max_audio_seconds": 2},
    "services": {
        "text": {"model": {"name": "text-model", "source": "/m/t", "max_output_tokens": 100, "default_max_tokens": 64}},
        "vision": {"model": {"name": "vision-model", "source": "/m/v"}},
        "audio": {"model": {"name": "audio-model", "source": "/m/a"}},
    },
}


class EngineBackend:
    """Router backend that calls engines in-process: unit tests of router logic only."""

    def __init__(self, engines: dict[ServiceKind, FakeEngine]) -> None:
        self.engines = engines
        self.requests: list[GenerationRequest] = []

    async def stream(self, kind: ServiceKind, request: GenerationRequest, request_id: str) -> AsyncIterator[Chunk]:
        self.requests.append(request)
        async for chunk in self.engines[kind].generate(request, request_id=request_id):
            yield chunk


@pytest.fixture
def config():
    return parse_config(CONFIG)


@pytest.fixture
async def router(config):
    engines = {kind: FakeEngine(step_delay_s=0.005) for kind in config.services}
    backend = EngineBackend(engines)
    server, port, _ = await start_grpc_server(config, backend)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.InferenceStub(channel), backend
    await channel.close()
    await server.stop(0)

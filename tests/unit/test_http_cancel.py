"""A non-streaming OpenAI request whose client disconnects is cancelled: the engine request is aborted and the
engine's request count returns to zero (real uvicorn over the in-process router, a slow FakeEngine)."""

import asyncio

import httpx
import pytest
from gemma_serving.config import ServiceKind, parse_config
from gemma_serving.router.server import start_openai_server

from tests.unit.conftest import CONFIG

OVERRIDES = {"router": {"port": 0, "http_port": 0}}


@pytest.fixture
async def slow_http(make_router):
    router, backend = await make_router(OVERRIDES, step_delay_s=0.05)  # 100 tokens take 5 s
    server, port = await start_openai_server(parse_config({**CONFIG, **OVERRIDES}), router)
    yield f"http://127.0.0.1:{port}", backend.engines[ServiceKind.TEXT], backend.engines[ServiceKind.AUDIO]
    server.should_exit = True
    await server.gemma_task


async def _until(condition, timeout_s: float) -> float:
    loop = asyncio.get_running_loop()
    began = loop.time()
    while not condition():
        assert loop.time() - began < timeout_s, "timed out"
        await asyncio.sleep(0.01)
    return loop.time() - began


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": "text-model", "messages": [{"role": "user", "content": "hi"}],
                              "max_tokens": 100}),
    ("/v1/completions", {"model": "text-model", "prompt": "Once upon", "max_tokens": 100}),
])
async def test_disconnect_cancels_a_unary_request(slow_http, path, body):
    base, engine, _ = slow_http
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        call = asyncio.ensure_future(client.post(path, json=body))
        await _until(lambda: engine.in_flight, 5)
        (request_id,) = engine.in_flight
        call.cancel()  # closes the connection mid-request
        with pytest.raises(asyncio.CancelledError):
            await call
    took = await _until(lambda: not engine.in_flight, 1.0)  # not the 5 s the answer would take
    assert request_id in engine.aborted and took < 1.0
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:  # still serving
        reply = await client.post(path, json={**body, "max_tokens": 2})
    assert reply.status_code == 200

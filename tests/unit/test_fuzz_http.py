"""Property-based fuzz of the OpenAI HTTP surface: random and hostile bodies (huge, deeply nested, invalid UTF-8,
wrong content types, multipart bombs, random JSON in the shape of real requests) sent over real sockets to a real
uvicorn server over the in-process router (FakeEngine behind). Each answer must be an expected status (never a 500,
never a hang), and afterwards the server still answers a valid request and no engine request is left running."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest
from gemma_serving.config import parse_config
from gemma_serving.engines.fake import FakeEngine
from gemma_serving.router.server import start_openai_server
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.http_fuzz import METHODS, PATHS, SETTINGS, content_types, hostile_bodies, send_and_check, shaped_requests
from tests.unit.conftest import CONFIG, start_router

MAX_BODY = 32 * 1024
OVERRIDES = {"router": {"port": 0, "http_port": 0},
             "limits": {**CONFIG["limits"], "max_http_body_bytes": MAX_BODY, "max_json_depth": 24}}
MODELS = ["text-model", "vision-model", "audio-model", "nope", ""]
VALID_CHAT = {"model": "text-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


class ServerThread:
    """The router and its HTTP surface on an event loop of their own, so hypothesis can drive them synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> int:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> int:
        config = parse_config({**CONFIG, **OVERRIDES})
        self.router, self.backend = await start_router(config, lambda: FakeEngine(step_delay_s=0.0))
        self.http, port = await start_openai_server(config, self.router)
        return port

    def in_flight(self) -> int:
        return sum(len(engine.in_flight) for engine in self.backend.engines.values())

    def stop(self) -> None:
        async def stop():
            self.http.should_exit = True
            await self.http.gemma_task
            await self.router.drain_and_stop(0)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server():
    thread = ServerThread()
    port = thread.start()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        yield client, thread
        reply = client.post("/v1/chat/completions", json=VALID_CHAT)
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
    assert thread.in_flight() == 0
    thread.stop()


@settings(max_examples=200, **SETTINGS)
@given(path=st.sampled_from(PATHS), method=st.sampled_from(METHODS),
       body=hostile_bodies([MAX_BODY - 40, MAX_BODY, MAX_BODY + 1, 4 * MAX_BODY]), content_type=content_types)
def test_hostile_http_bodies_get_expected_statuses(server, path, method, body, content_type):
    send_and_check(server[0], path, method, body, content_type)


@settings(max_examples=100, derandomize=True, **SETTINGS)
@given(path=st.sampled_from(PATHS[:2]), body=shaped_requests(MODELS))
@example(path=PATHS[0], body={"model": "text-model", "messages": [], "response_format": []})
def test_random_requests_in_the_openai_shape_get_expected_statuses(server, path, body):
    send_and_check(server[0], path, "POST", json.dumps(body).encode(), "application/json")

"""The HTTP port keeps idle keep-alive connections open for router.http_keep_alive_s (default longer than GCP load
balancers' 600 s), not uvicorn's 5 s: a client or load balancer reusing a pooled connection must never race the
router closing it (real uvicorn over the in-process router)."""

import asyncio

import pytest
from gemma_serving.config import parse_config
from gemma_serving.router.server import start_openai_server

from tests.unit.conftest import CONFIG

REQUEST = b"GET /v1/models HTTP/1.1\r\nHost: router\r\nConnection: keep-alive\r\n\r\n"


async def _http(make_router, **router):
    overrides = {"router": {"port": 0, "http_port": 0, **router}}
    router_server, _ = await make_router(overrides)
    return await start_openai_server(parse_config({**CONFIG, **overrides}), router_server)


async def _answered(reader, writer) -> None:
    writer.write(REQUEST)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    await asyncio.wait_for(reader.readexactly(length), 5)


def test_the_default_outlives_load_balancer_idle_timeouts():
    assert parse_config(CONFIG).router.http_keep_alive_s > 600


async def test_the_setting_reaches_uvicorn_and_an_idle_connection_closes_after_it(make_router):
    server, port = await _http(make_router, http_keep_alive_s=1)
    try:
        assert server.config.timeout_keep_alive == 1
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _answered(reader, writer)
        began = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(1), 4) == b""  # the router closed it (uvicorn's own 5 s: timeout)
        assert 0.8 < asyncio.get_running_loop().time() - began < 3
        writer.close()
    finally:
        server.should_exit = True
        await server.gemma_task


async def test_a_connection_idle_past_uvicorns_default_is_reused(make_router):
    server, port = await _http(make_router)
    try:
        assert server.config.timeout_keep_alive == parse_config(CONFIG).router.http_keep_alive_s
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _answered(reader, writer)
        await asyncio.sleep(5.5)  # uvicorn's default keep-alive is 5 s
        await _answered(reader, writer)  # the same connection still serves
        writer.close()
    finally:
        server.should_exit = True
        await server.gemma_task

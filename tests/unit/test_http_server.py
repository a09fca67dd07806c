"""QuietServer (router/http_server.py): real uvicorn on loopback whose main loop wakes once a second, not ten times,
and still refreshes its Date header and stops at once when told to."""

from __future__ import annotations

import asyncio
import time
from email.utils import parsedate_to_datetime

import httpx
from gemma_serving.router.http_server import QuietServer
from gemma_serving.router.openai_http import start_http_server
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def _ok(request):
    return PlainTextResponse("ok")


async def test_the_idle_main_loop_wakes_once_a_second_and_the_date_header_follows_the_clock():
    server, port = await start_http_server(Starlette(routes=[Route("/", _ok)]), "127.0.0.1", 0)
    assert isinstance(server, QuietServer)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            first = (await client.get("/")).headers["date"]
            ticks = server.ticks
            await asyncio.sleep(2.3)
            assert 1 <= server.ticks - ticks <= 3  # uvicorn's own loop: ~23 wakes in 2.3 s
            later = (await client.get("/")).headers["date"]
        assert (parsedate_to_datetime(later) - parsedate_to_datetime(first)).total_seconds() >= 1
    finally:
        server.should_exit = True
        await server.gemma_task


async def test_should_exit_stops_the_server_at_once():
    server, port = await start_http_server(Starlette(routes=[Route("/", _ok)]), "127.0.0.1", 0)
    await asyncio.sleep(0.1)
    began = time.monotonic()
    server.should_exit = True
    await asyncio.wait_for(server.gemma_task, 5)
    assert time.monotonic() - began < 0.5  # not a tick later

"""The HTTP equivalent of the interceptor: a route added to the OpenAI surface without any error handling still gets
a request id, authentication before it runs, OpenAI error bodies with our statuses, and one log line (real uvicorn,
in-process router)."""

import logging

import httpx
import pytest
from gemma_serving.config import parse_config
from gemma_serving.errors import InvalidRequest
from gemma_serving.router.openai_http import OpenAISurface, start_http_server
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.unit.conftest import CONFIG, start_router
from tests.unit.test_tenancy import KEY_A, security

ran: list[str] = []


async def brand_new_route(http):
    """What a careless new route looks like: raises whatever happens, handles nothing."""
    ran.append(http.state.tenant.id)
    what = http.query_params.get("what")
    if what == "bad":
        raise InvalidRequest("widgets must be 1..3, got 9", field="widgets")
    if what == "bug":
        raise RuntimeError("secret internal detail")
    return JSONResponse({"request_id": http.state.request_id})


@pytest.fixture
async def client():
    config = parse_config({**CONFIG, **security()})
    router, _ = await start_router(config)
    app = OpenAISurface(config, router.pipeline, router.health).app()
    app.router.routes.append(Route("/v1/brand-new", brand_new_route))
    server, port = await start_http_server(app, "127.0.0.1", 0)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
        yield c
    server.should_exit = True
    await server.gemma_task
    await router.drain_and_stop(0)


KEY = {"authorization": f"Bearer {KEY_A}"}


async def test_a_new_route_gets_request_ids_and_our_error_bodies(client, caplog):
    ok = await client.get("/v1/brand-new", headers=KEY)
    assert ok.status_code == 200 and ok.json()["request_id"] == ok.headers["x-request-id"]
    bad = await client.get("/v1/brand-new?what=bad", headers=KEY)
    assert bad.status_code == 400 and bad.json()["error"] == {
        "message": "widgets must be 1..3, got 9", "type": "invalid_request_error", "param": "widgets",
        "code": "InvalidRequest"}
    assert len(bad.headers["x-request-id"]) == 32
    with caplog.at_level(logging.ERROR):
        bug = await client.get("/v1/brand-new?what=bug", headers=KEY)
    assert bug.status_code == 500 and "secret" not in bug.text
    assert bug.headers["x-request-id"] in bug.json()["error"]["message"]
    assert "secret internal detail" in caplog.text


async def test_a_new_route_is_authenticated_before_it_runs(client):
    ran.clear()
    assert (await client.get("/v1/brand-new")).status_code == 401
    wrong = await client.get("/v1/brand-new", headers={"authorization": "Bearer gsk_00000000_nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    assert ran == []
    assert (await client.get("/v1/brand-new", headers=KEY)).status_code == 200 and ran == ["team-a"]
    assert (await client.get("/health")).status_code == 200  # open, like gRPC health
    assert (await client.get("/v1/models")).status_code == 200  # open, like ListModels


async def test_the_chat_answer_carries_the_middleware_request_id(client):
    reply = await client.post("/v1/chat/completions", headers=KEY, json={
        "model": "text-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert reply.json()["id"] == f"chatcmpl-{reply.headers['x-request-id']}"


async def test_each_http_request_logs_one_line(client, request_log):
    await client.get("/v1/brand-new", headers=KEY)
    await client.get("/v1/brand-new?what=bad", headers=KEY)
    await client.get("/v1/brand-new")
    lines = [r.fields for r in request_log if r.getMessage() == "http request finished"]
    assert [(f["path"], f["status"], f["tenant"]) for f in lines] == [
        ("/v1/brand-new", 200, "team-a"), ("/v1/brand-new", 400, "team-a"), ("/v1/brand-new", 401, "unknown")]

"""Body caps on the OpenAI HTTP surface: 413 naming the limit before the rest of a body is read (declared or chunked),
400 for JSON nested past the depth limit, invalid UTF-8 and multipart bombs; the server serves on afterwards (real
uvicorn over the in-process router, raw sockets where a client would not send such a request)."""

import asyncio

import httpx
import pytest
from gemma_serving.config import parse_config
from gemma_serving.router.server import start_openai_server

from tests.unit.conftest import CONFIG

MAX_BODY = 64 * 1024
LIMITS = {**CONFIG["limits"], "max_http_body_bytes": MAX_BODY, "max_json_depth": 16}
CHAT = {"model": "text-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture
async def http(make_router):
    overrides = {"router": {"port": 0, "http_port": 0}, "limits": LIMITS}
    router, backend = await make_router(overrides)
    server, port = await start_openai_server(parse_config({**CONFIG, **overrides}), router)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        yield client, port, backend
        reply = await client.post("/v1/chat/completions", json=CHAT)  # still serving after whatever the test sent
        assert reply.status_code == 200, reply.text
    server.should_exit = True
    await server.gemma_task


async def _raw(port: int, head: bytes, body_parts: list[bytes]) -> bytes:
    """Send a request head and body pieces (never the end of a chunked body); return what the server answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for part in body_parts:
            writer.write(part)
            await writer.drain()
        return await asyncio.wait_for(reader.read(65536), timeout=5)
    finally:
        writer.close()


async def test_declared_oversized_body_is_refused_before_it_is_sent(http):
    _, port, backend = http
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 10000000000\r\n\r\n")
    answer = await _raw(port, head, [b'{"model": "text-model"'])  # 10 GB declared, a few bytes sent
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"limits.max_http_body_bytes is 65536, got 10000000000" in answer
    assert backend.requests == []


async def test_chunked_body_is_cut_off_at_the_cap(http):
    _, port, _ = http
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
    chunk = b"x" * 8192
    pieces = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (MAX_BODY // len(chunk) + 2)  # just past the cap, no end
    answer = await _raw(port, head, pieces)
    assert answer.startswith(b"HTTP/1.1 413") and b"more than 65536 bytes" in answer


async def test_body_at_the_cap_is_read(http):
    client, _, _ = http
    body = b'{"model": "nope", "messages": [], "pad": "' + b"x" * (MAX_BODY - 60) + b'"}'
    assert len(body) <= MAX_BODY
    reply = await client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert reply.status_code in (400, 404) and reply.status_code != 413


@pytest.mark.parametrize("depth,why", [(17, "one over the limit"), (100_000, "past Python's recursion limit")])
async def test_json_nested_past_the_depth_limit_is_400(http, depth, why):
    client, _, _ = http
    body = '{"model": "text-model", "x": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
    reply = await client.post("/v1/chat/completions", content=body.encode())
    assert reply.status_code == (413 if len(body) > MAX_BODY else 400), why
    if reply.status_code == 400:
        assert "limits.max_json_depth (16)" in reply.json()["error"]["message"]


async def test_json_at_the_depth_limit_is_parsed(http):
    client, _, _ = http
    schema = {"type": "object", "x": [[[[[[[[[[]]]]]]]]]]}  # arbitrary JSON a tool's schema may hold
    body = {"model": "nope", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]}
    reply = await client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 404  # got as far as model lookup


@pytest.mark.parametrize("body,needle", [
    (b'{"model": "\xff\xfe"}', "not valid UTF-8"),
    (b'{"model": ', "not valid JSON"),
    (b'["a", "list"]', "must be a JSON object, got list"),
    (b"", "not valid JSON"),
])
async def test_bad_json_bodies_are_400_naming_the_problem(http, body, needle):
    client, _, _ = http
    reply = await client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and needle in reply.json()["error"]["message"]


async def test_invalid_content_length_is_400(http):
    _, port, _ = http
    answer = await _raw(port, b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 12abc\r\n\r\n", [])
    assert answer.startswith(b"HTTP/1.1 400")


async def test_multipart_bombs(http):
    client, _, _ = http
    many_fields = {f"f{i}": "x" for i in range(5000)}
    reply = await client.post("/v1/audio/transcriptions", data=many_fields, files={"file": ("a.wav", b"RIFF")})
    assert reply.status_code in (400, 413)
    many_files = [("file", (f"{i}.wav", b"RIFF")) for i in range(200)]
    reply = await client.post("/v1/audio/transcriptions", data={"model": "audio-model"}, files=many_files)
    assert reply.status_code == 400
    huge = {"file": ("a.wav", b"\x00" * (MAX_BODY + 1))}
    reply = await client.post("/v1/audio/transcriptions", data={"model": "audio-model"}, files=huge)
    assert reply.status_code == 413 and "limits.max_http_body_bytes" in reply.json()["error"]["message"]

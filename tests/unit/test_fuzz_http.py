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
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.unit.conftest import CONFIG, start_router

MAX_BODY = 32 * 1024
OVERRIDES = {"router": {"port": 0, "http_port": 0},
             "limits": {**CONFIG["limits"], "max_http_body_bytes": MAX_BODY, "max_json_depth": 24}}
EXPECTED = {200, 400, 401, 403, 404, 405, 413, 429, 501}
MODELS = ["text-model", "vision-model", "audio-model", "nope", ""]
PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/audio/transcriptions", "/v1/audio/translations",
         "/v1/models", "/v1/usage", "/health", "/v1/nothing"]
VALID_CHAT = {"model": "text-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


class ServerThread:
    """The router and its HTTP surface on an event loop of their own, so hypothesis can drive them synchronously."""

    def __init__(self) -> None:
        self.ready = threading.Event()
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


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                         st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=20)
parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": json_values}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": json_values}),
    st.fixed_dictionaries({"type": st.just("input_audio"), "input_audio": json_values}),
    json_values,
)
messages = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["user", "assistant", "system", "tool"]), json_values)},
    optional={"content": st.one_of(st.text(max_size=30), st.lists(parts, max_size=3), json_values),
              "tool_calls": json_values, "tool_call_id": json_values},
)
shaped_requests = st.fixed_dictionaries(
    {"model": st.one_of(st.sampled_from(MODELS), json_values)},
    optional={"messages": st.one_of(st.lists(messages, max_size=3), json_values),
              "prompt": st.one_of(st.text(max_size=30), json_values),
              "max_tokens": st.one_of(st.integers(-5, 5), json_values), "temperature": json_values,
              "top_p": json_values, "stop": json_values, "stream": json_values, "tools": json_values,
              "tool_choice": json_values, "response_format": json_values, "seed": json_values,
              "stream_options": json_values, "ignore_eos": json_values},
)


def _deep(depth: int, opener: str) -> bytes:
    closer = {"[": "]", '{"a":': "}"}[opener]
    return ('{"model": "text-model", "x": ' + opener * depth + "1" + closer * depth + "}").encode()


def _multipart_bomb(fields: int, files: int, field_size: int, boundary: str) -> bytes:
    out = []
    for i in range(fields):
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n{"x" * field_size}\r\n')
    for i in range(files):
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}.wav"\r\n'
                   f"Content-Type: audio/wav\r\n\r\nRIFF\r\n")
    return ("".join(out) + f"--{boundary}--\r\n").encode()


bodies = st.one_of(
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.binary(max_size=2048),
    st.builds(_deep, st.integers(1, 200_000), st.sampled_from(["[", '{"a":'])),
    st.builds(lambda n: b'{"model": "text-model", "pad": "' + b"x" * n + b'"}',
              st.sampled_from([MAX_BODY - 40, MAX_BODY, MAX_BODY + 1, 4 * MAX_BODY])),
    st.builds(lambda raw: b'{"model": "' + raw + b'"}', st.binary(min_size=1, max_size=16)),  # invalid UTF-8
    st.builds(_multipart_bomb, st.integers(0, 3000), st.integers(0, 50), st.integers(0, 64),
              st.sampled_from(["b", "x" * 70, "--"])),
)
content_types = st.one_of(st.sampled_from([
    None, "application/json", "text/plain", "multipart/form-data", "multipart/form-data; boundary=b",
    "multipart/form-data; boundary=" + "x" * 70, "application/x-www-form-urlencoded", "application/json; charset=latin-1",
]), st.text(max_size=40).filter(lambda t: t.isprintable() and t.isascii()))


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                       HealthCheck.data_too_large])


@settings(max_examples=200, **SETTINGS)
@given(path=st.sampled_from(PATHS), method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]), body=bodies,
       content_type=content_types)
def test_hostile_http_bodies_get_expected_statuses(server, path, method, body, content_type):
    _send_and_check(server, path, method, body, content_type)


@pytest.mark.xfail(strict=True, reason="the OpenAI request parsing (router/openai_convert.py) turns wrongly typed "
                   "fields into 500s (e.g. response_format: []); issue 15 replaces it with typed request models; "
                   "remove this mark then")
@settings(max_examples=100, derandomize=True, **SETTINGS)
@given(path=st.sampled_from(PATHS[:2]), body=shaped_requests)
@example(path=PATHS[0], body={"model": "text-model", "messages": [], "response_format": []})
def test_random_requests_in_the_openai_shape_get_expected_statuses(server, path, body):
    _send_and_check(server, path, "POST", json.dumps(body).encode(), "application/json")


def _send_and_check(server, path: str, method: str, body: bytes, content_type: str | None) -> None:
    client, _ = server
    headers = {"content-type": content_type} if content_type else {}
    try:
        reply = client.request(method, path, content=body, headers=headers)
    except httpx.RemoteProtocolError:
        return  # the server closed a connection it refused (only ever after a 413 it sent)
    assert reply.status_code in EXPECTED, (reply.status_code, reply.text[:300])
    routed = path != "/v1/nothing" and reply.status_code != 405  # Starlette's own plain 404 / 405 otherwise
    if reply.status_code >= 400 and routed:
        assert "error" in reply.json(), reply.text[:300]

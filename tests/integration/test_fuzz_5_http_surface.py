"""Fuzz, part 5 (HTTP): the OpenAI surface of the real platform (real uvicorn in the router replica, real engines)
gets random and hostile bodies -- deeply nested, invalid UTF-8, wrong content types, multipart bombs, bodies around a
size cap -- and answers each with an expected status (tests/http_fuzz.py: never a 500, never a hang). Bodies over the
64 MiB default cap are checked by a declared content-length (refused before the body is sent). Runs before part 6,
which checks the platform still serves."""

from __future__ import annotations

import socket

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.http_fuzz import METHODS, PATHS, SETTINGS, content_types, hostile_bodies, send_and_check
from tests.integration.fuzz_calls import (
    FUZZ,
    RAN,
    SENT,
    leave_the_platform_ready,  # noqa: F401 (autouse module fixture)
)


@pytest.fixture(scope="module")
def http(platform):
    _, handle, _ = platform
    port = handle.http_port.remote().result()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield client, port


@settings(FUZZ, max_examples=150, **SETTINGS)
@given(path=st.sampled_from(PATHS), method=st.sampled_from(METHODS), body=hostile_bodies([1024, 2**20]),
       content_type=content_types)
def test_hostile_http_bodies_on_the_platform(http, path, method, body, content_type):
    RAN.add("http")
    status = send_and_check(http[0], path, method, body, content_type)
    SENT[("http", f"{method} {path}", str(status))] += 1


def test_a_declared_body_over_the_default_cap_is_refused_before_it_is_sent(http):
    _, port = http
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 68157440\r\n\r\n{")  # 65 MiB declared, one byte sent
        answer = b""
        while b"limits.max_http_body_bytes" not in answer and len(answer) < 65536:
            more = sock.recv(65536)  # headers and body may come in separate segments (TCP_NODELAY)
            if not more:
                break
            answer += more
    assert answer.startswith(b"HTTP/1.1 413") and b"limits.max_http_body_bytes is 67108864" in answer
    SENT[("http", "POST /v1/chat/completions", "413")] += 1

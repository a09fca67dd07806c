"""Hypothesis strategies and the check for fuzzing the OpenAI HTTP surface (unit: over the in-process router;
integration: over the real platform): random and hostile bodies, content types, and what answers are expected."""

from __future__ import annotations

import json

import httpx
from hypothesis import HealthCheck
from hypothesis import strategies as st

#: The statuses a request may get; anything else (a 500, a 502 from a crash, a hang) is a bug.
EXPECTED = {200, 400, 401, 403, 404, 405, 413, 429, 501}
PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/audio/transcriptions", "/v1/audio/translations",
         "/v1/models", "/v1/usage", "/health", "/v1/nothing"]
METHODS = ["POST", "POST", "POST", "GET", "PUT"]
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                       HealthCheck.data_too_large])

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


def shaped_requests(models: list[str]):
    """JSON objects shaped like OpenAI requests, every field possibly of the wrong type."""
    return st.fixed_dictionaries(
        {"model": st.one_of(st.sampled_from(models), json_values)},
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


def hostile_bodies(pad_sizes: list[int]):
    """Random and hostile bodies: JSON values, bytes, deep nesting, padded bodies of `pad_sizes` (around the cap),
    invalid UTF-8, multipart bombs."""
    return st.one_of(
        st.builds(lambda v: json.dumps(v).encode(), json_values),
        st.binary(max_size=2048),
        st.builds(_deep, st.integers(1, 200_000), st.sampled_from(["[", '{"a":'])),
        st.builds(lambda n: b'{"model": "text-model", "pad": "' + b"x" * n + b'"}', st.sampled_from(pad_sizes)),
        st.builds(lambda raw: b'{"model": "' + raw + b'"}', st.binary(min_size=1, max_size=16)),  # invalid UTF-8
        st.builds(_multipart_bomb, st.integers(0, 3000), st.integers(0, 50), st.integers(0, 64),
                  st.sampled_from(["b", "x" * 70, "--"])),
    )


content_types = st.one_of(st.sampled_from([
    None, "application/json", "text/plain", "multipart/form-data", "multipart/form-data; boundary=b",
    "multipart/form-data; boundary=" + "x" * 70, "application/x-www-form-urlencoded",
    "application/json; charset=latin-1",
    # and random ones a client can send (HTTP forbids control characters and surrounding whitespace in them)
]), st.text(max_size=40).filter(lambda t: t.isprintable() and t.isascii() and t == t.strip()))


def send_and_check(client: httpx.Client, path: str, method: str, body: bytes, content_type: str | None) -> int:
    """Send one request; assert its status is expected and routed errors are OpenAI error bodies. Returns it."""
    headers = {"content-type": content_type} if content_type else {}
    try:
        reply = client.request(method, path, content=body, headers=headers)
    except httpx.RemoteProtocolError:
        return 413  # the server closed a connection it refused (only ever after a 413 it sent)
    assert reply.status_code in EXPECTED, (reply.status_code, reply.text[:300])
    routed = path != "/v1/nothing" and reply.status_code != 405  # Starlette's own plain 404 / 405 otherwise
    if reply.status_code >= 400 and routed:
        assert "error" in reply.json(), reply.text[:300]
    return reply.status_code

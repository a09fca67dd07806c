"""Size and shape caps on the HTTP surface, applied before a handler sees a body.

`BodyLimitMiddleware` (pure ASGI) refuses a declared `content-length` over `limits.max_http_body_bytes` with 413 at
once, and stops reading a chunked body the moment it passes the cap (413 too), so neither a huge JSON body nor a
multipart bomb is ever read whole. `parse_json_object` turns a body into a JSON object or raises InvalidRequest naming
what was wrong: invalid UTF-8, invalid JSON, not an object, or nesting deeper than `limits.max_json_depth`.
"""

from __future__ import annotations

import asyncio
import json

from starlette.responses import JSONResponse

from gemma_serving.errors import InvalidRequest, RequestTooLarge

#: After refusing, up to this much more of the body is read and dropped (within LINGER_S) before the connection
#: closes, so a client still writing its body sees the 413 instead of a connection reset (nginx's lingering close).
LINGER_BYTES = 1 * 2**20
LINGER_S = 5.0


async def _refuse(exc: InvalidRequest, scope, receive, send) -> None:
    body = {"error": {"message": exc.message, "type": "invalid_request_error", "param": exc.field,
                      "code": type(exc).__name__}}
    response = JSONResponse(body, status_code=exc.http_status, headers={"connection": "close"})
    # The whole answer goes out at once, but the response stays open (more_body) while the rest of the body is
    # dropped: the server ends reading a request once its response is complete. The connection is not reused.
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": True})
    try:
        await asyncio.wait_for(_drop(receive, LINGER_BYTES), LINGER_S)
    except TimeoutError:
        pass
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _drop(receive, max_bytes: int) -> None:
    dropped = 0
    while dropped <= max_bytes:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        dropped += len(message.get("body", b""))


def too_large(max_bytes: int, got: str) -> RequestTooLarge:
    return RequestTooLarge(f"request body too large: limits.max_http_body_bytes is {max_bytes}, got {got}")


class BodyLimitMiddleware:
    """Reads at most `max_body_bytes` of a request body, then hands the app the buffered body; refuses beyond."""

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _refuse(InvalidRequest("content-length must be a decimal number of bytes"), scope, receive, send)
                return
            if int(declared) > self.max_body_bytes:
                await _refuse(too_large(self.max_body_bytes, f"{int(declared)} (content-length)"), scope, receive, send)
                return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away before sending its body
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await _refuse(too_large(self.max_body_bytes, f"more than {self.max_body_bytes} bytes"), scope, receive,
                              send)
                return
        await self.app(scope, _replay(bytes(body), receive), send)


def _replay(body: bytes, receive):
    """An ASGI receive that returns the buffered body first, then the real channel (disconnects come through)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed():
        return pending.pop() if pending else await receive()

    return replayed


def parse_json_object(body: bytes, max_depth: int) -> dict:
    """The JSON object in `body`; InvalidRequest naming the problem (and the depth limit) otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise _too_deep(max_depth) from None
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc.msg} at position {exc.pos}"
                             if isinstance(exc, json.JSONDecodeError) else "the request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"the request body must be a JSON object, got {type(value).__name__}")
    if json_depth(value, max_depth) > max_depth:
        raise _too_deep(max_depth)
    return value


def _too_deep(max_depth: int) -> InvalidRequest:
    return InvalidRequest(f"the request body nests JSON deeper than limits.max_json_depth ({max_depth})")


def json_depth(value, stop_after: int) -> int:
    """Nesting depth of parsed JSON (an object or list is one level), counted without recursion and given up once
    past `stop_after`."""
    deepest, level = 0, [(value, 1)]
    while level:
        item, depth = level.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > stop_after:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            level.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest

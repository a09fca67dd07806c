"""The HTTP equivalent of the gRPC interceptor: request ids, authentication, error mapping and the request log for
every route of the OpenAI surface, so a new route is safe by default.

`OpenAIRequestMiddleware` (pure ASGI) gives each request an id (`request.state.request_id`, the `x-request-id`
header of every answer), authenticates it before any route runs (`request.state.tenant`; /health and /v1/models are
open, like gRPC health and ListModels), turns anything a route raises into an OpenAI error body with the status of the
error hierarchy (unexpected ones: 500 with only the request id), and logs one line per request.
"""

from __future__ import annotations

import logging
import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse

from gemma_serving.errors import GemmaServingError
from gemma_serving.router.auth import Credentials
from gemma_serving.router.http_tls import client_cert_subject
from gemma_serving.telemetry.logs import configure_request_logging

log = logging.getLogger(__name__)

#: Paths any caller may use (load-balancer probes, the list of served models).
OPEN_PATHS = frozenset({"/health", "/v1/models"})

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error"}


def error_body(exc: BaseException, request_id: str) -> tuple[int, dict]:
    """HTTP status and OpenAI-style error body for `exc` (unexpected errors: 500 with only the request id)."""
    if isinstance(exc, GemmaServingError) and exc.grpc_code != "INTERNAL":
        status, message, field = exc.http_status, exc.message, exc.field
    else:
        log.error("request %s failed unexpectedly", request_id, exc_info=exc)
        status, message, field = 500, f"internal error; request id {request_id}", None
    kind = _ERROR_TYPES.get(status, "server_error")
    return status, {"error": {"message": message, "type": kind, "param": field, "code": exc.__class__.__name__
                              if status != 500 else "internal_error"}}


def error_response(exc: BaseException, request_id: str) -> JSONResponse:
    """The OpenAI error response for `exc`, with the request id and, for overload, `retry-after`."""
    status, body = error_body(exc, request_id)
    headers = {"x-request-id": request_id}
    if isinstance(exc, GemmaServingError) and exc.retry_after_s is not None:
        headers["retry-after"] = str(max(1, round(exc.retry_after_s)))
    return JSONResponse(body, status_code=status, headers=headers)


def credentials(http: Request) -> Credentials:
    """What an HTTP caller presented: its authorization header, verified client-certificate CN, address."""
    return Credentials(http.headers.get("authorization"), client_cert_subject(http.scope),
                       http.client.host if http.client else "unknown")


class OpenAIRequestMiddleware:
    """Request id, authentication, error mapping and one log line around every HTTP request."""

    def __init__(self, app, authenticate) -> None:
        self.app = app
        self._authenticate = authenticate  # Credentials -> TenantConfig, raising Unauthenticated / RateLimited
        self._log = configure_request_logging()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id, began = uuid.uuid4().hex, time.monotonic()
        state = scope.setdefault("state", {})
        state.update(request_id=request_id, tenant=None)
        answer = {"status": 500, "started": False, "tenant": "unknown"}
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                answer.update(status=message["status"], started=True)
                headers = list(message.get("headers") or [])
                if not any(name == b"x-request-id" for name, _ in headers):
                    message = {**message, "headers": headers + [header]}
            await send(message)

        try:
            if scope["path"] not in OPEN_PATHS:
                tenant = self._authenticate(credentials(Request(scope)))
                state["tenant"] = tenant
                answer["tenant"] = tenant.id
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if answer["started"]:  # the answer is under way: nothing else can be sent
                log.error("request %s failed after its response started", request_id, exc_info=exc)
                raise
            await error_response(exc, request_id)(scope, receive, send_with_id)
        finally:
            self._log.info("http request finished", extra={"fields": {
                "request_id": request_id, "method": scope.get("method"), "path": scope["path"][:128],
                "tenant": answer["tenant"], "status": answer["status"],
                "latency_ms": round((time.monotonic() - began) * 1000, 1),
            }})

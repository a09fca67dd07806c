"""gRPC server interceptors: request ids, authentication, error mapping and the RPC log for every Inference and
Admin RPC.

A servicer method only converts the wire format and calls the pipeline; what every RPC needs happens here, so a new
RPC is safe by default (as KServe's ExceptionToStatusInterceptor does for its servers):

- a request id per RPC (`current_request_id()`), sent back in every error's `google.rpc.RequestInfo` and
  `request-id` trailer;
- authentication before the method runs (`current_tenant()`), except for the RPCs in `OPEN_METHODS`;
- any exception the method raises becomes the status of the error hierarchy with our `google.rpc` details
  (`status.status_for`: field violations, retry info); unexpected ones are INTERNAL with only the request id;
- one JSON line per RPC on the request logger (method, status, tenant, latency, request id; never request content).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import uuid

import grpc

from gemma_serving.router.auth import Credentials
from gemma_serving.router.status import status_for
from gemma_serving.security_config import TenantConfig
from gemma_serving.telemetry.logs import configure_request_logging

log = logging.getLogger(__name__)

#: The services the interceptor wraps (ours; health and reflection are grpcio's).
SERVICE_PREFIXES = ("/gemma.serving.v1.Inference/", "/gemma.serving.v1.Admin/")
#: Inference RPCs any caller may make (the served models are not a secret; health and reflection are not ours).
OPEN_METHODS = frozenset({"ListModels"})

_REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("gemma_request_id")
_TENANT: contextvars.ContextVar[TenantConfig | None] = contextvars.ContextVar("gemma_tenant", default=None)


def current_request_id() -> str:
    """The id the interceptor gave the RPC being served (a fresh one outside an RPC)."""
    return _REQUEST_ID.get(None) or uuid.uuid4().hex


def current_tenant() -> TenantConfig | None:
    """The tenant the interceptor authenticated for the RPC being served (None for open methods)."""
    return _TENANT.get()


def credentials_of(context) -> Credentials:
    """The caller's authorization metadata, verified mTLS certificate CN (if any) and address."""
    metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
    subject = None
    names = (context.auth_context() or {}).get("x509_common_name")
    if names:
        subject = names[0].decode(errors="replace")
    return Credentials(metadata.get("authorization"), subject, (context.peer() or "unknown").rsplit(":", 1)[0])


class InferenceInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every Inference method handler with request id, authentication, error mapping and the RPC log."""

    def __init__(self, authenticate) -> None:
        self._authenticate = authenticate  # Credentials -> TenantConfig, raising Unauthenticated / RateLimited
        self._log = configure_request_logging()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(SERVICE_PREFIXES):
            return handler
        name = method.rsplit("/", 1)[1]
        options = dict(request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(name, handler.unary_unary), **options)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._streaming(name, handler.unary_stream), **options)
        return handler  # no client-streaming RPCs in the API

    @contextlib.asynccontextmanager
    async def _served(self, name: str, context):
        """Around one RPC: its request id and tenant, its status on failure, its log line."""
        rpc = _Rpc(name, uuid.uuid4().hex, time.monotonic())
        _REQUEST_ID.set(rpc.request_id)
        _TENANT.set(None)
        try:
            if name not in OPEN_METHODS:
                tenant = self._authenticate(credentials_of(context))
                _TENANT.set(tenant)
                rpc.tenant = tenant.id
            yield
        except BaseException as exc:
            await self._fail(rpc, exc, context)
        finally:
            self._finish(rpc)

    def _unary(self, name: str, behavior):
        async def unary(request, context):
            async with self._served(name, context):
                return await behavior(request, context)

        return unary

    def _streaming(self, name: str, behavior):
        async def streaming(request, context):
            async with self._served(name, context):
                async for message in behavior(request, context):
                    yield message

        return streaming

    async def _fail(self, rpc: _Rpc, exc: BaseException, context) -> None:
        """Record why the RPC ended and end it with the matching status (raises, as context.abort does)."""
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            rpc.code = "CANCELLED"
            raise exc
        if isinstance(exc, grpc.aio.AbortError):  # the method aborted with a status of its own
            rpc.code = context.code().name if context.code() is not None else "UNKNOWN"
            raise exc
        if not isinstance(exc, Exception):
            raise exc
        status = status_for(exc, rpc.request_id)
        rpc.code = status.code.name
        await context.abort(status.code, status.details, status.trailing_metadata)

    def _finish(self, rpc: _Rpc) -> None:
        self._log.info("rpc finished", extra={"fields": {
            "request_id": rpc.request_id, "rpc": rpc.name, "tenant": rpc.tenant, "status": rpc.code,
            "latency_ms": round((time.monotonic() - rpc.began) * 1000, 1),
        }})


class _Rpc:
    """What the RPC log line says about one RPC."""

    __slots__ = ("name", "request_id", "began", "tenant", "code")

    def __init__(self, name: str, request_id: str, began: float) -> None:
        self.name, self.request_id, self.began = name, request_id, began
        self.tenant, self.code = "unknown", "OK"

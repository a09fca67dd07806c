"""Turning exceptions into gRPC statuses with rich details (google.rpc via grpcio-status).

Every failure gets: the code from the error hierarchy, a message saying what was wrong and what is allowed, a
`google.rpc.RequestInfo` with the request id, a `google.rpc.BadRequest` field violation when a field is at fault, and
a `google.rpc.RetryInfo` (plus a plain `retry-after-ms` trailer) when the client should come back later.
Unexpected exceptions become INTERNAL with a generic message; their details go to the log under the request id.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gemma_serving.errors import GemmaServingError

log = logging.getLogger(__name__)


def _packed(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_for(exc: BaseException, request_id: str) -> grpc.Status:
    """The gRPC status (code, message, trailing metadata with details) a client receives for `exc`."""
    if isinstance(exc, GemmaServingError) and exc.grpc_code != "INTERNAL":
        code, message = grpc.StatusCode[exc.grpc_code], exc.message
        log.info("request %s failed: %s %s", request_id, exc.grpc_code, message)
    else:
        code, message = grpc.StatusCode.INTERNAL, f"internal error; request id {request_id}"
        log.error("request %s failed unexpectedly", request_id, exc_info=exc)
        exc = None
    details = [_packed(error_details_pb2.RequestInfo(request_id=request_id))]
    extra: list[tuple[str, str]] = [("request-id", request_id)]
    if exc is not None and exc.field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=message)
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[violation])))
    if exc is not None and exc.retry_after_s is not None:
        seconds = max(exc.retry_after_s, 0.0)
        delay = duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
        extra.append(("retry-after-ms", str(int(seconds * 1000))))
    status = rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=details))
    return _Status(code, message, tuple(status.trailing_metadata) + tuple(extra))


class _Status(grpc.Status):
    def __init__(self, code, details, trailing_metadata):
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


"""One exception hierarchy for the whole platform.

Each class carries the gRPC status code name and the HTTP status it maps to; the router is the only place that turns
them into wire errors. Codes are names (not `grpc.StatusCode`) so that this bottom layer imports no gRPC.
Messages say what was wrong and what is allowed; they never contain tracebacks or prompt text.
"""

from __future__ import annotations


class GemmaServingError(Exception):
    """Base class. Anything raised that is not a subclass is reported to clients as INTERNAL.

    `field` names the request field at fault (sent as a google.rpc.BadRequest field violation);
    `retry_after_s` tells an overloaded or rate-limited client when to retry (sent as google.rpc.RetryInfo).
    """

    grpc_code: str = "INTERNAL"
    http_status: int = 500

    def __init__(self, message: str, *, field: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s

    def __reduce__(self):  # keep class, message and details across Ray's pickling
        return (_rebuild, (type(self), self.message, self.field, self.retry_after_s))


def _rebuild(cls, message, field, retry_after_s):
    return cls(message, field=field, retry_after_s=retry_after_s)


class InvalidRequest(GemmaServingError):
    grpc_code = "INVALID_ARGUMENT"
    http_status = 400


class RequestTooLarge(InvalidRequest):
    """A request body over its configured size cap (refused before the rest is read)."""

    http_status = 413


class Unauthenticated(GemmaServingError):
    grpc_code = "UNAUTHENTICATED"
    http_status = 401


class PermissionDenied(GemmaServingError):
    grpc_code = "PERMISSION_DENIED"
    http_status = 403


class ModelNotFound(GemmaServingError):
    grpc_code = "NOT_FOUND"
    http_status = 404


class AlreadyExists(GemmaServingError):
    """The thing to create exists already (e.g. an adapter name that is registered)."""

    grpc_code = "ALREADY_EXISTS"
    http_status = 409


class RateLimited(GemmaServingError):
    grpc_code = "RESOURCE_EXHAUSTED"
    http_status = 429


class Overloaded(GemmaServingError):
    grpc_code = "RESOURCE_EXHAUSTED"
    http_status = 429


class NotReady(GemmaServingError):
    grpc_code = "UNAVAILABLE"
    http_status = 503


class EngineDead(GemmaServingError):
    grpc_code = "UNAVAILABLE"
    http_status = 503


class ReplicaGone(GemmaServingError):
    grpc_code = "UNAVAILABLE"
    http_status = 503


class CallRefused(ReplicaGone):
    """A replica did not take a direct call (at max_ongoing_requests, or draining): the router sends the request
    through Serve instead. Never reaches a client unless that fails too (then UNAVAILABLE, as ReplicaGone)."""


class DeadlineExceeded(GemmaServingError):
    grpc_code = "DEADLINE_EXCEEDED"
    http_status = 504


class UnsupportedModality(GemmaServingError):
    grpc_code = "UNIMPLEMENTED"
    http_status = 501


class PolicyViolation(GemmaServingError):
    """The safety policy refused the request or stopped the output."""

    grpc_code = "FAILED_PRECONDITION"
    http_status = 400


class ClientCancelled(GemmaServingError):
    """The client went away (cancelled, disconnected) before the answer was complete; 499 as nginx logs it."""

    grpc_code = "CANCELLED"
    http_status = 499


class InternalError(GemmaServingError):
    """An unexpected failure; the client sees only a generic message and the request id."""


def named(name: str) -> type[GemmaServingError]:
    """The platform error class called `name` (InternalError for a name this version does not know): how an error
    that crossed a process boundary by name becomes its class again."""
    return _BY_NAME.get(name, InternalError)


_BY_NAME = {c.__name__: c for c in list(vars().values())
            if isinstance(c, type) and issubclass(c, GemmaServingError)}

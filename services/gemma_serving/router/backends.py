"""How the router reaches the modality services: a direct call or a Serve handle call per request, deltas over the
channel.

The control path is a direct call where a replica with room is known (`deltas/calls.py`, `router/direct_routes.py`:
a signed message over TCP to a replica the router chose), else a plain (unary) Ray Serve handle call that stays open
for the request's whole life: Serve counts it for autoscaling and backpressure, cancelling it aborts the engine
request, a dead replica fails it. A direct call keeps the same guarantees its own way: cancelling it sends CANCEL,
a replica that refuses it (full, draining) sends the request through Serve, a replica whose connection drops fails
it. The token path is the delta channel (`gemma_serving.deltas`): the replica pushes the request's deltas, batched
with every other request's of the same engine step, to this router's subscriber; `_Relay` joins the two.

Ray failures are translated into the platform's errors here, so the servicer sees one exception hierarchy. Three
replica-lifecycle rules live here too:
- a request waits for its first output at most `max_wait_for_replica_s` (and never past its deadline): that covers a
  cold start from zero replicas and the replacement of a crashed one, which Serve buffers rather than fails;
- a request whose replica died (or whose engine died) before it produced anything is sent again, once: Serve routes
  the retry to a live replica. Once output has streamed, a lost replica ends the stream with UNAVAILABLE;
- the request's deadline holds for the whole stream, not only until its first output.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Awaitable, Protocol

from gemma_serving.config import ServiceKind
from gemma_serving.deltas.subscriber import DeltaSubscriber
from gemma_serving.deltas.wire import error_from_fields, merge
from gemma_serving.engines.types import Chunk, GenerationRequest
from gemma_serving.errors import (
    CallRefused,
    DeadlineExceeded,
    EngineDead,
    GemmaServingError,
    NotReady,
    Overloaded,
    ReplicaGone,
    UnsupportedModality,
)

log = logging.getLogger(__name__)

#: Failures after which a request that produced no output yet is sent once more.
RETRYABLE = (ReplicaGone, EngineDead)


class Backend(Protocol):
    """Streams chunks for a validated request from the service `kind`."""

    def stream(self, kind: ServiceKind, request: GenerationRequest, request_id: str) -> AsyncIterator[Chunk]: ...

    async def probe(self, kind: ServiceKind) -> dict | None:
        """Raise if the service's engine is unhealthy; else its short-generation probe report (verdict, latency_s)
        or None (healthy, no report)."""


def translate_ray_error(exc: BaseException) -> BaseException:
    """The platform error for an exception raised through a deployment handle (or `exc` itself if unknown)."""
    from ray.exceptions import NodeDiedError, RayActorError, RayTaskError, WorkerCrashedError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

    if isinstance(exc, RayTaskError):
        exc = exc.cause if exc.cause is not None else exc
    if isinstance(exc, GemmaServingError):
        # A clean copy, without Ray's traceback text.
        return type(exc)(exc.message, field=exc.field, retry_after_s=exc.retry_after_s)
    if isinstance(exc, BackPressureError):
        return Overloaded(
            "the service is at capacity (in-flight and queued requests); retry shortly", retry_after_s=1.0
        )
    if isinstance(exc, (RayActorError, DeploymentUnavailableError, ReplicaUnavailableError, NodeDiedError,
                        WorkerCrashedError)):
        return ReplicaGone("the replica serving this request went away; retry", retry_after_s=1.0)
    return exc


class PendingCall(Protocol):
    """A started replica call: awaitable (its result or error) and cancellable (aborts the engine request)."""

    def __await__(self): ...

    def cancel(self) -> Any: ...


#: Starts `generate_into(request, request_id, address, stream)` on a replica of the service `kind`.
CallStarter = Callable[[ServiceKind, GenerationRequest, str, str, int], PendingCall]
#: Starts the same as a direct call (router/direct_routes.py), or returns None: then it goes through `CallStarter`.
DirectStarter = Callable[[ServiceKind, GenerationRequest, str, str, int], "PendingCall | None"]

#: Why an inbox was interrupted (besides deltas arriving).
_CALL_DONE, _DEADLINE, _NO_REPLICA, _TAIL_LOST = "call done", "deadline", "no replica", "tail lost"
#: How long the end of a stream may trail its call's successful return (two transports, two orders).
TAIL_GRACE_S = 5.0


class DeltaChannelBackend:
    """Streams a request's chunks from the delta channel while its replica call runs (see module docstring)."""

    def __init__(
        self,
        start_call: CallStarter,
        subscriber: DeltaSubscriber,
        *,
        probe: Callable[[ServiceKind], Awaitable[dict | None]],
        max_wait_for_replica_s: dict[ServiceKind, float] | None = None,
        on_retry: Callable[[ServiceKind], None] | None = None,
        translate: Callable[[BaseException], BaseException] = lambda exc: exc,
        start_direct: DirectStarter | None = None,
    ) -> None:
        self._start = start_call
        self._start_direct = start_direct
        self._subscriber = subscriber
        self._probe = probe
        self._max_wait = max_wait_for_replica_s or {}
        self._on_retry = on_retry or (lambda kind: None)
        self._translate = translate

    async def probe(self, kind: ServiceKind) -> dict | None:
        try:
            return await self._probe(kind)
        except Exception as exc:
            raise self._translate(exc) from None

    async def stream(self, kind: ServiceKind, request: GenerationRequest, request_id: str) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline = began + request.budget_s if request.budget_s is not None else float("inf")
        wait_until = began + self._max_wait.get(kind, float("inf"))
        retried, direct = False, self._start_direct is not None
        while True:
            relay = _Relay(self, kind, request, request_id, deadline, wait_until, direct)
            try:
                async for chunk in relay.run():
                    yield chunk
                return
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:
                error = self._translate(exc)
                if relay.produced:
                    raise error from None
                direct = False  # whatever went wrong, the next attempt is Serve's to route
                if relay.went_direct and isinstance(error, CallRefused):
                    continue  # the replica was full or draining: Serve queues the request (not a retry)
                if not retried and isinstance(error, RETRYABLE):
                    log.warning("%s replica lost before the first output of %s; retrying once", kind.value,
                                request_id)
                    self._on_retry(kind)
                    retried = True
                    continue
                raise error from None


class _Relay:
    """One attempt: start the replica call, relay its deltas, turn timeouts and call failures into errors."""

    def __init__(self, backend: DeltaChannelBackend, kind: ServiceKind, request: GenerationRequest, request_id: str,
                 deadline: float, wait_until: float, direct: bool) -> None:
        self._b, self._kind, self._request, self._request_id = backend, kind, request, request_id
        self._deadline, self._wait_until = deadline, wait_until
        self._direct = direct
        self.produced = self.went_direct = False

    def _start_call(self, stream: int) -> PendingCall:
        b = self._b
        args = (self._kind, self._request, self._request_id, b._subscriber.address, stream)
        call = b._start_direct(*args) if self._direct else None
        self.went_direct = call is not None
        return call if call is not None else b._start(*args)

    async def run(self) -> AsyncIterator[Chunk]:
        b, loop = self._b, asyncio.get_running_loop()
        inbox = b._subscriber.open()
        sent = loop.time()
        call = self._start_call(inbox.stream)
        waiter = asyncio.ensure_future(call)
        waiter.add_done_callback(lambda _: inbox.interrupt(_CALL_DONE))
        first_until = min(self._deadline, self._wait_until)
        timer = _arm(loop, first_until, inbox, _DEADLINE if self._deadline <= self._wait_until else _NO_REPLICA)
        finished = False
        try:
            while True:
                deltas = await inbox.take()
                failed = deltas[-1].error if deltas else None
                if failed is not None:  # a direct call's failure: its last delta (text before it still counts)
                    finished = True  # the replica has stopped: nothing to cancel
                    if len(deltas) > 1:
                        self.produced = True
                        yield merge(deltas[:-1])
                    raise error_from_fields(failed)
                if deltas:
                    if self.produced and len(deltas) == 1 and _bare_end(deltas[0]):
                        finished = True  # the end of a stream whose last chunk had no finish reason
                        return
                    queue_s = None
                    if not self.produced:
                        self.produced = True
                        first = deltas[0].replica_s
                        queue_s = max(loop.time() - sent - first, 0.0) if first is not None else None
                        if first_until < self._deadline:  # the replica wait is over: only the deadline is left
                            timer.cancel()
                            timer = _arm(loop, self._deadline, inbox, _DEADLINE)
                    yield merge(deltas, queue_s)
                    if deltas[-1].end:
                        finished = True
                        return
                    continue
                reason, inbox.interrupted = inbox.interrupted, None
                if reason is _CALL_DONE:
                    if waiter.cancelled():
                        raise ReplicaGone("the replica call was cancelled", retry_after_s=1.0)
                    if waiter.exception() is not None:
                        raise waiter.exception()
                    timer.cancel()  # returned: its last deltas are on their way over the channel
                    timer = _arm(loop, min(loop.time() + TAIL_GRACE_S, self._deadline), inbox, _TAIL_LOST)
                elif reason is _DEADLINE:
                    raise DeadlineExceeded(
                        "the request passed its deadline and was aborted" if self.produced else
                        f"the request's deadline passed before the {self._kind.value} service produced output "
                        "(it may be starting replicas)")
                elif reason is _NO_REPLICA:
                    raise NotReady(
                        f"no {self._kind.value} replica produced output within max_wait_for_replica_s "
                        f"({b._max_wait[self._kind]:g} s); the service may be scaling up, retry later",
                        retry_after_s=5.0)
                elif reason is _TAIL_LOST:
                    raise ReplicaGone("the replica finished but the end of its output did not arrive; retry",
                                      retry_after_s=1.0)
                else:  # the subscriber closed (router shutting down)
                    raise NotReady("the router is shutting down; retry", retry_after_s=1.0)
        finally:
            timer.cancel()
            b._subscriber.close(inbox)
            if not waiter.done():
                if finished:
                    _settle(call)
                else:
                    # Cancelling the call aborts the engine request (or drops it from Serve's queue).
                    call.cancel()
                    waiter.cancel()


def _settle(call: PendingCall) -> None:
    """A finished stream's call: a direct call ends with its stream; a Serve call returns on its own."""
    finish = getattr(call, "finish", None)
    if finish is not None:
        finish()


def _bare_end(delta) -> bool:
    return delta.end and not delta.text and delta.finish is None


class _NoTimer:
    def cancel(self) -> None:
        pass


def _arm(loop: asyncio.AbstractEventLoop, at: float, inbox, reason: str):
    """Interrupt `inbox` with `reason` at loop time `at` (never, for infinity)."""
    return loop.call_at(at, inbox.interrupt, reason) if at != float("inf") else _NoTimer()


class ServeHandleBackend(DeltaChannelBackend):
    """Calls `ModalityDeployment.generate_into` through Ray Serve deployment handles, one handle per service."""

    def __init__(
        self,
        handles: dict[str, Any],
        subscriber: DeltaSubscriber,
        *,
        max_wait_for_replica_s: dict[ServiceKind, float] | None = None,
        on_retry: Callable[[ServiceKind], None] | None = None,
        direct: DirectStarter | None = None,
    ) -> None:
        self._handles = {ServiceKind(k): h for k, h in handles.items()}
        #: Handles that carry a LoRA adapter as Serve's multiplexed model id, by (service, adapter).
        self._adapter_handles: dict[tuple[ServiceKind, str], Any] = {}
        super().__init__(self._start_call, subscriber, probe=self._check_health,
                         max_wait_for_replica_s=max_wait_for_replica_s, on_retry=on_retry,
                         translate=translate_ray_error, start_direct=direct)

    async def _check_health(self, kind: ServiceKind) -> dict | None:
        # The replica times its probe generations on its engine in the background: this call never waits for one
        # (see deployments/health_probe.py).
        return await self._handles[kind].health_report.remote()

    def _handle(self, kind: ServiceKind, request: GenerationRequest):
        handle = self._handles.get(kind)
        if handle is None:
            raise UnsupportedModality(f"no {kind.value} service is deployed")
        if request.adapter:
            # Serve model multiplexing routes the request to a replica that has the adapter loaded when one exists
            # (else to any replica, which loads it). Validation has bounded adapters to the configured names.
            key = (kind, request.adapter)
            if key not in self._adapter_handles:
                self._adapter_handles[key] = handle.options(multiplexed_model_id=request.adapter)
            handle = self._adapter_handles[key]
        return handle

    def _start_call(self, kind: ServiceKind, request: GenerationRequest, request_id: str, address: str,
                    stream: int) -> PendingCall:
        return self._handle(kind, request).generate_into.remote(request, request_id, address, stream)

"""How the router reaches the modality services: Ray Serve deployment handles, streaming.

Ray failures are translated into the platform's errors here, so the servicer sees one exception hierarchy. Two
replica-lifecycle rules live here too:
- a request waits for its first output at most `max_wait_for_replica_s` (and never past its deadline): that covers a
  cold start from zero replicas and the replacement of a crashed one, which Serve buffers rather than fails;
- a request whose replica died (or whose engine died) before it produced anything is sent again, once: Serve routes
  the retry to a live replica. Once output has streamed, a lost replica ends the stream with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from gemma_serving.config import ServiceKind
from gemma_serving.engines.types import Chunk, GenerationRequest
from gemma_serving.errors import (
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


class ServeHandleBackend:
    """Calls `ModalityDeployment.generate` through streaming deployment handles, one handle per service."""

    def __init__(
        self,
        handles: dict[str, Any],
        *,
        max_wait_for_replica_s: dict[ServiceKind, float] | None = None,
        on_retry: Callable[[ServiceKind], None] | None = None,
    ) -> None:
        self._handles = {ServiceKind(k): h.options(stream=True) for k, h in handles.items()}
        self._unary = {ServiceKind(k): h for k, h in handles.items()}
        #: Streaming handles that carry a LoRA adapter as Serve's multiplexed model id, by (service, adapter).
        self._adapter_handles: dict[tuple[ServiceKind, str], Any] = {}
        self._max_wait = max_wait_for_replica_s or {}
        self._on_retry = on_retry or (lambda kind: None)

    async def probe(self, kind: ServiceKind) -> dict | None:
        try:
            # The replica times its probe generations on its engine in the background: this call never waits for
            # one (see deployments/health_probe.py).
            return await self._unary[kind].health_report.remote()
        except Exception as exc:
            raise translate_ray_error(exc) from None

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

    async def stream(self, kind: ServiceKind, request: GenerationRequest, request_id: str) -> AsyncIterator[Chunk]:
        handle = self._handle(kind, request)
        wait_until = time.monotonic() + self._max_wait.get(kind, float("inf"))
        for attempt in (1, 2):
            response = handle.generate.remote(request, request_id)
            produced = done = False
            try:
                first = await self._first_output(response, kind, request, wait_until)
                produced = True
                if first is not None:
                    yield first
                    async for chunk in response:
                        yield chunk
                done = True
                return
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:
                error = translate_ray_error(exc)
                done = not isinstance(error, (NotReady, DeadlineExceeded))  # our own timeouts still cancel
                if attempt == 1 and not produced and isinstance(error, RETRYABLE):
                    log.warning("%s replica lost before the first output of %s; retrying once", kind.value,
                                request_id)
                    self._on_retry(kind)
                    continue
                raise error from None
            finally:
                if not done:
                    # A handle stream abandoned by a caller outside a replica request does not cancel the replica
                    # call by itself: cancel explicitly so the engine aborts (or Serve drops the queued) request.
                    response.cancel()

    async def _first_output(self, response, kind: ServiceKind, request: GenerationRequest,
                            wait_until: float) -> Chunk | None:
        """The first chunk (None for an empty stream), waiting no longer than the replica wait and the deadline."""
        now = time.monotonic()
        replica_left = wait_until - now
        deadline_left = request.deadline - time.time() if request.deadline else float("inf")
        limit = min(replica_left, deadline_left)
        try:
            return await asyncio.wait_for(anext(response), None if limit == float("inf") else max(limit, 0.0))
        except StopAsyncIteration:
            return None
        except TimeoutError:
            if deadline_left <= replica_left:
                raise DeadlineExceeded(
                    f"the request's deadline passed before the {kind.value} service produced output "
                    "(it may be starting replicas)"
                ) from None
            raise NotReady(
                f"no {kind.value} replica produced output within max_wait_for_replica_s "
                f"({self._max_wait[kind]:g} s); the service may be scaling up, retry later",
                retry_after_s=5.0,
            ) from None

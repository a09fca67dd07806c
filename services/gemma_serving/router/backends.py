"""How the router reaches the modality services: Ray Serve deployment handles, streaming.

Ray failures are translated into the platform's errors here, so the servicer sees one exception hierarchy.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Protocol

from gemma_serving.config import ServiceKind
from gemma_serving.engines.types import Chunk, GenerationRequest
from gemma_serving.errors import GemmaServingError, Overloaded, ReplicaGone, UnsupportedModality


class Backend(Protocol):
    """Streams chunks for a validated request from the service `kind`."""

    def stream(self, kind: ServiceKind, request: GenerationRequest, request_id: str) -> AsyncIterator[Chunk]: ...

    async def probe(self, kind: ServiceKind) -> None:
        """Return if the service's engine is healthy; raise otherwise."""


def translate_ray_error(exc: BaseException) -> BaseException:
    """The platform error for an exception raised through a deployment handle (or `exc` itself if unknown)."""
    from ray.exceptions import RayActorError, RayTaskError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

    if isinstance(exc, RayTaskError):
        exc = exc.cause if exc.cause is not None else exc
    if isinstance(exc, GemmaServingError):
        return type(exc)(exc.message)  # a clean copy, without Ray's traceback text
    if isinstance(exc, BackPressureError):
        return Overloaded(
            "the service is at capacity (in-flight and queued requests); retry shortly", retry_after_s=1.0
        )
    if isinstance(exc, (RayActorError, DeploymentUnavailableError, ReplicaUnavailableError)):
        return ReplicaGone("the replica serving this request went away; retry")
    return exc


class ServeHandleBackend:
    """Calls `ModalityDeployment.generate` through streaming deployment handles, one handle per service."""

    def __init__(self, handles: dict[str, Any]) -> None:
        self._handles = {ServiceKind(k): h.options(stream=True) for k, h in handles.items()}
        self._unary = {ServiceKind(k): h for k, h in handles.items()}
        #: Streaming handles that carry a LoRA adapter as Serve's multiplexed model id, by (service, adapter).
        self._adapter_handles: dict[tuple[ServiceKind, str], Any] = {}

    async def probe(self, kind: ServiceKind) -> None:
        try:
            await self._unary[kind].check_health.remote()
        except Exception as exc:
            raise translate_ray_error(exc) from None

    async def stream(self, kind: ServiceKind, request: GenerationRequest, request_id: str) -> AsyncIterator[Chunk]:
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
        response = handle.generate.remote(request, request_id)
        finished = False
        try:
            async for chunk in response:
                yield chunk
            finished = True
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            finished = True
            raise translate_ray_error(exc) from None
        finally:
            if not finished:
                # A handle stream abandoned by a caller outside a replica request does not cancel the replica
                # call by itself: cancel explicitly so the engine aborts the request.
                response.cancel()

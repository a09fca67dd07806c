"""The Engine protocol: the one seam between serving code and an inference library."""

from __future__ import annotations

from typing import AsyncIterator, Protocol, runtime_checkable

from gemma_serving.engines.types import Chunk, GenerationRequest


@runtime_checkable
class Engine(Protocol):
    """A text generator over one model. Knows nothing of Ray, gRPC or tenants.

    Implementations raise `gemma_serving.errors` exceptions: InvalidRequest for input the model cannot take,
    EngineDead when the engine is gone; anything else is treated as internal.

    Optional (looked up with getattr, so engines without it still satisfy the protocol):
    `on_final_output(request_id, callback) -> bool` calls `callback` on the event loop once the running request's
    final output is ready, before it is pulled (a paced stream then sends its end at once); False when the engine
    cannot tell (VllmEngine, FakeEngine with merge_late).
    """

    async def start(self) -> None:
        """Load the model; returns when the engine can serve."""

    def generate(self, request: GenerationRequest, *, request_id: str) -> AsyncIterator[Chunk]:
        """Stream chunks for `request`. Closing the iterator early aborts the request in the engine."""

    async def abort(self, request_id: str) -> None:
        """Abort a running request; unknown ids are ignored."""

    async def check_health(self) -> None:
        """Return if healthy; raise EngineDead otherwise."""

    async def shutdown(self) -> None:
        """Stop the engine and free its resources."""

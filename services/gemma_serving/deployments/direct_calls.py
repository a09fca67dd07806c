"""A replica's end of direct calls (deltas/calls.py): take requests routers send it without a Serve handle call.

The replica binds a CallServer on its node's Ray address, announces it in Ray's key-value store for routers to find
(deltas/registry.py), admits a call only while its engine has fewer than `max_ongoing_requests` requests in flight
(else the router is told to use Serve, which queues), streams the call's deltas like any other request, and reports
a failure as the stream's last delta. On shutdown it withdraws its announcement first, refuses new calls, and waits
for the ones in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gemma_serving.deltas.calls import CallServer, CallSigner
from gemma_serving.deltas.publisher import DeltaPublisher, StreamSink
from gemma_serving.deltas.registry import RayKeyValueStore, ReplicaAnnouncement, shared_secret
from gemma_serving.engines.types import GenerationRequest
from gemma_serving.errors import CallRefused, DeadlineExceeded, GemmaServingError

log = logging.getLogger(__name__)

#: Streams one request's chunks into a sink (ModalityDeployment.stream_into).
StreamInto = Callable[[StreamSink, GenerationRequest, str], Awaitable[None]]


class DirectCalls:
    def __init__(self, stream_into: StreamInto, publisher: DeltaPublisher, admit: Callable[[], bool]) -> None:
        self._stream_into, self._publisher, self._admit = stream_into, publisher, admit
        self._server: CallServer | None = None
        self._announcement: ReplicaAnnouncement | None = None
        self._draining = False

    async def start(self, signer: CallSigner, host: str, announce: Callable[[str], ReplicaAnnouncement]) -> None:
        self._server = CallServer(signer, self._run, self._refuse, host, host)
        await self._server.start()
        self._announcement = announce(self._server.address)
        await self._announcement.start()

    @classmethod
    async def in_replica(cls, service: str, stream_into: StreamInto, publisher: DeltaPublisher,
                         admit: Callable[[], bool]) -> DirectCalls | None:
        """Started and announced when running inside a Serve replica; None elsewhere (unit tests)."""
        try:
            from ray import serve

            context = serve.get_replica_context()
        except Exception:  # noqa: BLE001 - RayServeException outside a replica
            return None
        import ray

        store = RayKeyValueStore()
        app = context.app_name
        secret = await asyncio.to_thread(shared_secret, store, app)
        calls = cls(stream_into, publisher, admit)
        await calls.start(CallSigner(secret), ray.util.get_node_ip_address(),
                          lambda address: ReplicaAnnouncement(store, app, service, context.replica_id.unique_id,
                                                              address))
        return calls

    @property
    def address(self) -> str:
        return self._server.address if self._server is not None else ""

    def describe(self) -> dict:
        server = self._server
        return {"address": self.address, "started": server.started if server else 0, "in_flight": self.in_flight,
                "draining": self._draining}

    @property
    def in_flight(self) -> int:
        return self._server.in_flight if self._server is not None else 0

    def _refuse(self, address: str, stream: int) -> None:
        self._publisher.sink(address, stream).fail(
            CallRefused("the replica did not take the call (at capacity, draining or another version); "
                        "send the request through Serve"))

    async def _run(self, request: GenerationRequest, request_id: str, address: str, stream: int) -> None:
        if self._draining or not self._admit():
            self._refuse(address, stream)
            return
        sink = self._publisher.sink(address, stream)
        try:
            await self._stream_into(sink, request, request_id)
        except asyncio.CancelledError:
            raise  # the router cancelled: it expects nothing more
        except TimeoutError:
            sink.fail(DeadlineExceeded("the request passed its deadline and was aborted"))
        except Exception as exc:  # noqa: BLE001 - every failure ends the stream with its error
            if not isinstance(exc, GemmaServingError):  # a bug or an engine failure: its text stays in this log
                log.exception("direct call %s failed: %s", request_id, type(exc).__name__)
            sink.fail(exc)

    async def drain(self, timeout_s: float) -> None:
        """Withdraw the announcement, refuse new calls, wait up to `timeout_s` for those in flight."""
        self._draining = True
        if self._announcement is not None:
            try:
                await self._announcement.withdraw()
            except Exception:  # noqa: BLE001 - routers drop us anyway once the heartbeat stops
                log.warning("could not withdraw the direct-call announcement", exc_info=True)
        if self._server is not None:
            left = await self._server.drain(timeout_s)
            if left:
                log.warning("%d direct calls still running after %.0f s of draining were cancelled", left, timeout_s)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

"""The router's choice of replica for a direct call (deltas/calls.py), or None: then the request is a Serve call.

Every `BEAT_S` the router re-reads the replicas that announced a call address (deltas/registry.py), opens a connection
to new ones (and again to known ones whose connection dropped), and closes those that withdrew once their calls are
done. A request goes direct when its service has a live,
connected replica and it carries no LoRA adapter (adapters stay on Serve's multiplexed routing): to the less loaded
(by this router's calls in flight) of two replicas drawn at random, as Serve's own power-of-two-choices router does.
"""

from __future__ import annotations

import asyncio
import logging
import random

from gemma_serving.config import ServiceKind
from gemma_serving.deltas.calls import CallClient, CallSigner, DirectCall
from gemma_serving.deltas.registry import BEAT_S, KeyValueStore, ReplicaDirectory, shared_secret
from gemma_serving.engines.types import GenerationRequest

log = logging.getLogger(__name__)


class DirectRoutes:
    def __init__(self, client: CallClient, directory: ReplicaDirectory, services: set[ServiceKind]) -> None:
        self._client, self._directory, self._services = client, directory, services
        self._task: asyncio.Task | None = None

    @classmethod
    async def create(cls, store: KeyValueStore, app: str, services: set[ServiceKind]) -> DirectRoutes:
        secret = await asyncio.to_thread(shared_secret, store, app)
        routes = cls(CallClient(CallSigner(secret)), ReplicaDirectory(store, app), services)
        await routes.refresh()
        routes._task = asyncio.create_task(routes._run(), name="direct-routes")
        return routes

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(BEAT_S)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - the GCS may be restarting: keep the last view
                log.warning("could not read the direct-call replicas", exc_info=True)

    async def refresh(self) -> None:
        await self._directory.refresh()
        known = self._directory.all_addresses()
        for address in known:
            self._client.connect(address)
        for address in self._client.addresses:
            if address not in known and not self._client.in_flight(address):
                self._client.disconnect(address)  # withdrew (drained) or gone for good

    @property
    def services(self) -> set[ServiceKind]:
        """The services whose requests may go direct."""
        return self._services

    def replicas(self, kind: ServiceKind) -> int:
        """The service's live replicas: announced, heartbeat moving (as of the last refresh, at most BEAT_S ago)."""
        return self._directory.live_count(kind.value)

    def start(self, kind: ServiceKind, request: GenerationRequest, request_id: str, reply_address: str,
              stream: int) -> DirectCall | None:
        if request.adapter or kind not in self._services:
            return None
        client = self._client
        live = [a for a in self._directory.live(kind.value) if client.connected(a)]
        if not live:
            return None
        if len(live) > 2:
            live = random.sample(live, 2)
        address = min(live, key=client.in_flight)
        return client.start(address, request, request_id, reply_address, stream)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._client.close()

"""Service health as the router sees it: probes each service's engine and publishes grpc.health.v1 statuses.

Health service names: "" (the whole server), "gemma.serving.v1.Inference", and one per deployment: "text",
"vision", "audio". The server is SERVING while it is not draining and every service that keeps replicas
(min_replicas > 0) is ready; a service whose engine fails its check turns NOT_SERVING on its own name.
Services that scale to zero are not probed (a probe would wake them); they report SERVING, and their first request
waits for a cold start. Their state follows Serve's replica count instead: READY while a replica runs, else
SCALED_TO_ZERO.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from enum import Enum

from grpc_health.v1 import health, health_pb2

from gemma_serving.config import ServiceKind, ServingConfig
from gemma_serving.errors import Overloaded

log = logging.getLogger(__name__)

INFERENCE_SERVICE = "gemma.serving.v1.Inference"
_SERVING, _NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class ServiceState(str, Enum):
    STARTING = "starting"
    READY = "ready"
    UNAVAILABLE = "unavailable"
    SCALED_TO_ZERO = "scaled_to_zero"


class ServiceHealth:
    """Keeps `states` current by probing services every `interval_s`, and mirrors them into `servicer`."""

    def __init__(
        self,
        config: ServingConfig,
        probe: Callable[[ServiceKind], Awaitable[None]],
        servicer: health.aio.HealthServicer,
        *,
        interval_s: float = 5.0,
    ) -> None:
        self._probe = probe
        self._servicer = servicer
        self._interval_s = interval_s
        self._probed = [k for k, s in config.services.items() if s.deployment.autoscaling.min_replicas > 0]
        self.states = {
            kind: ServiceState.STARTING if kind in self._probed else ServiceState.SCALED_TO_ZERO
            for kind in config.services
        }
        self.draining = False

    async def _check(self, kind: ServiceKind) -> ServiceState:
        try:
            await asyncio.wait_for(self._probe(kind), self._interval_s)
            return ServiceState.READY
        except Overloaded:
            return ServiceState.READY  # busy is not broken
        except TimeoutError:
            return ServiceState.STARTING if self.states[kind] is ServiceState.STARTING else ServiceState.UNAVAILABLE
        except Exception as exc:
            log.warning("service %s failed its health check: %s", kind.value, type(exc).__name__)
            return ServiceState.UNAVAILABLE

    async def refresh(self) -> None:
        """Probe every probed service once and publish the result."""
        results = await asyncio.gather(*(self._check(k) for k in self._probed))
        self.states.update(zip(self._probed, results))
        await self.publish()

    async def observe_replicas(self, kind: ServiceKind, running: int) -> None:
        """Running replicas of a service, from Serve: sets the state of services that scale to zero."""
        if kind not in self._probed and kind in self.states:
            state = ServiceState.READY if running > 0 else ServiceState.SCALED_TO_ZERO
            if state is not self.states[kind]:
                self.states[kind] = state
                await self.publish()

    def serving(self) -> bool:
        """The whole server's verdict: not draining, and every service that keeps replicas is ready."""
        return not self.draining and all(self.states[k] is ServiceState.READY for k in self._probed)

    async def publish(self) -> None:
        for kind, state in self.states.items():
            ok = state in (ServiceState.READY, ServiceState.SCALED_TO_ZERO) and not self.draining
            await self._servicer.set(kind.value, _SERVING if ok else _NOT_SERVING)
        overall = self.serving()
        for name in ("", INFERENCE_SERVICE):
            await self._servicer.set(name, _SERVING if overall else _NOT_SERVING)

    async def run(self) -> None:
        """Probe forever (cancel the task to stop)."""
        while True:
            await self.refresh()
            await asyncio.sleep(self._interval_s)

    async def drain(self) -> None:
        """Turn everything NOT_SERVING (load balancers stop sending) before the server stops."""
        self.draining = True
        await self.publish()

"""Service health as the router sees it: probes each service's engine and publishes grpc.health.v1 statuses.

Health service names: "" (the whole server), "gemma.serving.v1.Inference", and one per deployment: "text",
"vision", "audio". The server is SERVING while it is not draining and every service that keeps replicas
(min_replicas > 0) is ready or degraded; a service whose engine fails its check turns NOT_SERVING on its own name.
Services that scale to zero are not probed (a probe would wake them); they report SERVING, and their first request
waits for a cold start. Their state follows Serve's replica count instead: READY while a replica runs, else
SCALED_TO_ZERO.

Three states for probed services: the probe returns the replica's short-generation report
(`deployments/health_probe.py`, timed on the engine inside the replica, not behind user requests). A report slower
than the service's `health_probe.degraded_after_s` is DEGRADED: still SERVING on gRPC health (requests are slow, not
failing), DEGRADED in ListModels and /health, and in `gemma_serving_service_state`. The report itself travels over
a Serve handle, which can queue behind user requests: a report that does not arrive within the interval (or is
refused because Serve's queue is full) also means DEGRADED, until none arrived for the service's
`health_probe.timeout_s`. A failing probe, or an engine that fails its check, is UNAVAILABLE (NOT_SERVING).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

from grpc_health.v1 import health, health_pb2

from gemma_serving.config import ServiceKind, ServingConfig
from gemma_serving.errors import Overloaded

log = logging.getLogger(__name__)

INFERENCE_SERVICE = "gemma.serving.v1.Inference"
_SERVING, _NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class ServiceState(str, Enum):
    STARTING = "starting"
    READY = "ready"
    DEGRADED = "degraded"
    UNAVAILABLE = "unavailable"
    SCALED_TO_ZERO = "scaled_to_zero"


#: States in which a service takes requests (gRPC health SERVING).
SERVING_STATES = (ServiceState.READY, ServiceState.DEGRADED, ServiceState.SCALED_TO_ZERO)

#: A probe's report verdict (ProbeReport.verdict) -> the service state it means.
_VERDICTS = {"ready": ServiceState.READY, "degraded": ServiceState.DEGRADED, "failing": ServiceState.UNAVAILABLE}


class ServiceHealth:
    """Keeps `states` current by probing services every `interval_s`, and mirrors them into `servicer` (and, given
    `metrics`, into gemma_serving_service_state / gemma_serving_health_probe_seconds).

    `probe(kind)` raises when the service is broken; it may return a report mapping (`verdict`: ready | degraded |
    failing, `latency_s`) from the replica's short-generation probe, or None (ready)."""

    def __init__(
        self,
        config: ServingConfig,
        probe: Callable[[ServiceKind], Awaitable[Any]],
        servicer: health.aio.HealthServicer,
        *,
        interval_s: float = 5.0,
        metrics: Any = None,
    ) -> None:
        self._probe = probe
        self._servicer = servicer
        self._interval_s = interval_s
        self._metrics = metrics
        self._probed = [k for k, s in config.services.items() if s.deployment.autoscaling.min_replicas > 0]
        self.states = {
            kind: ServiceState.STARTING if kind in self._probed else ServiceState.SCALED_TO_ZERO
            for kind in config.services
        }
        #: Latency of each service's last short-generation probe (seconds; absent before one reported).
        self.probe_seconds: dict[ServiceKind, float] = {}
        self._timeouts = {k: s.deployment.health_probe.timeout_s for k, s in config.services.items()}
        self._unanswered_since: dict[ServiceKind, float] = {}
        self.draining = False

    async def _check(self, kind: ServiceKind) -> ServiceState:
        try:
            report = await asyncio.wait_for(self._probe(kind), self._interval_s)
            self._unanswered_since.pop(kind, None)
            if not report:
                return ServiceState.READY
            if report.get("latency_s") is not None:
                self.probe_seconds[kind] = report["latency_s"]
            state = _VERDICTS.get(report.get("verdict"), ServiceState.READY)
            if state is ServiceState.UNAVAILABLE:
                log.warning("service %s failed its probe generation: %s", kind.value, report.get("error", ""))
            return state
        except Overloaded:
            return ServiceState.DEGRADED  # busy (Serve's queue is full) is slow, not broken
        except TimeoutError:
            return self._unanswered(kind)
        except Exception as exc:
            log.warning("service %s failed its health check: %s", kind.value, type(exc).__name__)
            return ServiceState.UNAVAILABLE

    def _unanswered(self, kind: ServiceKind) -> ServiceState:
        """A probe without an answer within the interval: a starting or broken service stays so; a serving one is
        slow (the probe queued behind user requests at a saturated service) until it has gone unanswered for the
        service's health_probe.timeout_s."""
        if self.states[kind] in (ServiceState.STARTING, ServiceState.UNAVAILABLE):
            return self.states[kind]  # no answer is no news: not started yet, or still broken
        now = time.monotonic()
        since = self._unanswered_since.setdefault(kind, now)
        return ServiceState.UNAVAILABLE if now - since >= self._timeouts[kind] else ServiceState.DEGRADED

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
        """The whole server's verdict: not draining, and every service that keeps replicas is ready (or degraded:
        slow still serves)."""
        return not self.draining and all(
            self.states[k] in (ServiceState.READY, ServiceState.DEGRADED) for k in self._probed
        )

    def degraded(self) -> list[ServiceKind]:
        """Services whose last probe generation was slower than their threshold."""
        return [k for k, state in self.states.items() if state is ServiceState.DEGRADED]

    async def publish(self) -> None:
        for kind, state in self.states.items():
            ok = state in SERVING_STATES and not self.draining
            await self._servicer.set(kind.value, _SERVING if ok else _NOT_SERVING)
        overall = self.serving()
        for name in ("", INFERENCE_SERVICE):
            await self._servicer.set(name, _SERVING if overall else _NOT_SERVING)
        if self._metrics is not None:
            self._metrics.record_health(self.states, self.probe_seconds)

    async def run(self) -> None:
        """Probe forever (cancel the task to stop)."""
        while True:
            await self.refresh()
            await asyncio.sleep(self._interval_s)

    async def drain(self) -> None:
        """Turn everything NOT_SERVING (load balancers stop sending) before the server stops."""
        self.draining = True
        await self.publish()

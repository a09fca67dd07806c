"""The replica's short-generation health probe.

A probe generates `max_tokens` greedy tokens from a fixed prompt on the replica's engine directly, so it never
waits in Serve's replica queue behind user requests; it does share the engine's batch with them, which is the point:
its latency is what a short request sees right now. Probes run in the background, at most one at a time and one per
`interval_s`, started by whoever asks for the report, so an idle service is not probed and a report never waits for a
generation. A probe still running after `degraded_after_s` reports DEGRADED at once; after `timeout_s` it is
abandoned (aborted) and reports failing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import asdict, dataclass

from gemma_serving.engines.base import Engine
from gemma_serving.engines.types import GenerationRequest, Message, Sampling, TextPart
from gemma_serving.observability_config import HealthProbeSettings

log = logging.getLogger(__name__)

PROBE_PROMPT = "Reply with one word: ready?"
#: Engine request ids of probes start with this (so counts of user requests can leave them out).
PROBE_REQUEST_PREFIX = "health-probe-"


class ProbeVerdict:
    READY = "ready"
    DEGRADED = "degraded"
    FAILING = "failing"


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """The replica's health as its last probe (or the one still running) saw it. Picklable across Ray."""

    verdict: str
    latency_s: float | None = None
    error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


class EngineProbe:
    """Times short generations on `engine` and reports the latest verdict."""

    def __init__(self, engine: Engine, model: str, settings: HealthProbeSettings) -> None:
        self._engine = engine
        self._model = model
        self._settings = settings
        self._ids = itertools.count()
        self._running: asyncio.Task | None = None
        self._running_since = 0.0
        self._last: ProbeReport | None = None
        self._last_started = float("-inf")
        self.probes = 0

    def _request(self) -> GenerationRequest:
        return GenerationRequest(model=self._model, messages=(Message("user", (TextPart(PROBE_PROMPT),)),),
                                 sampling=Sampling(max_tokens=self._settings.max_tokens, temperature=0.0))

    async def _probe(self) -> ProbeReport:
        began = time.monotonic()
        stream = self._engine.generate(self._request(), request_id=f"{PROBE_REQUEST_PREFIX}{next(self._ids)}")
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                async for _chunk in stream:
                    pass
        except TimeoutError:
            return ProbeReport(ProbeVerdict.FAILING, time.monotonic() - began,
                               f"no answer within timeout_s ({self._settings.timeout_s:g} s)")
        except Exception as exc:
            log.warning("health probe of %s failed: %s", self._model, type(exc).__name__)
            return ProbeReport(ProbeVerdict.FAILING, time.monotonic() - began, type(exc).__name__)
        finally:
            await stream.aclose()  # aborts the engine request if it is still running
        latency = time.monotonic() - began
        slow = latency > self._settings.degraded_after_s
        return ProbeReport(ProbeVerdict.DEGRADED if slow else ProbeVerdict.READY, latency)

    def _start(self) -> None:
        self.probes += 1
        self._last_started = self._running_since = time.monotonic()
        self._running = asyncio.create_task(self._probe())

    def report(self) -> ProbeReport | None:
        """The latest verdict (None before the first probe finished and while it is still fast); starts a probe when
        none ran within `interval_s`."""
        now = time.monotonic()
        if self._running is not None and self._running.done():
            self._last = self._running.result()
            self._running = None
        if self._running is None and now - self._last_started >= self._settings.interval_s:
            self._start()
        if self._running is not None:
            elapsed = now - self._running_since
            if elapsed > self._settings.degraded_after_s:
                return ProbeReport(ProbeVerdict.DEGRADED, elapsed, "probe still running")
        return self._last

    def stop(self) -> None:
        if self._running is not None:
            self._running.cancel()

"""Sampled quality scores of live answers, off the token path.

`QualitySampledBackend` wraps the router's Backend. For a request that is not sampled its `stream` returns the inner
backend's stream object itself: no wrapper, no per-chunk work (a sampling share of 0 for the model costs one dict
lookup per request; with no share configured anywhere the wrapper is not installed at all). A sampled stream is
tapped: its chunks pass through unchanged while their text is kept; when it finishes normally the answer goes into a
bounded queue (full: dropped and counted), and a background task scores it with each scorer and records
`gemma_serving_quality_score{service,model,adapter,scorer}`. Cancelled or failed streams are not scored.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator

from gemma_serving.config import ServiceKind, ServingConfig
from gemma_serving.engines.types import Chunk, GenerationRequest
from gemma_serving.observability_config import QualitySettings
from gemma_serving.router.backends import Backend
from gemma_serving.router.quality_scorers import (
    Answer,
    FunctionScorer,
    JudgeScorer,
    Scorer,
    blocked_terms_scorer,
    json_valid_score,
    length_score,
    repetition_score,
)
from gemma_serving.telemetry.metrics import RouterMetrics

log = logging.getLogger(__name__)


class QualityMonitor:
    """Decides which answers are sampled, queues them, and scores them in a background task."""

    def __init__(self, settings: QualitySettings, scorers: list[Scorer], metrics: RouterMetrics) -> None:
        self._settings = settings
        self.scorers = scorers
        self._metrics = metrics
        self.queue: asyncio.Queue[Answer] = asyncio.Queue(maxsize=settings.queue_size)
        self._worker: asyncio.Task | None = None
        self.scored = 0

    def sampled(self, request: GenerationRequest) -> bool:
        ratio = self._settings.ratio_for(request.model, request.adapter)
        return ratio > 0 and (ratio >= 1 or random.random() < ratio)

    async def tap(self, stream: AsyncIterator[Chunk], service: str,
                  request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Pass `stream` through, keeping its text; submit the answer once it finished normally."""
        texts: list[str] = []
        last = None
        try:
            async for chunk in stream:
                texts.append(chunk.text)
                last = chunk
                yield chunk
        finally:
            await stream.aclose()
        if last is not None:
            self.submit(Answer(service, request, "".join(texts), last))

    def submit(self, answer: Answer) -> None:
        try:
            self.queue.put_nowait(answer)
        except asyncio.QueueFull:
            self._metrics.quality_dropped.labels(answer.service).inc()
            return
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._score_forever())

    async def _score_forever(self) -> None:
        while True:
            answer = await self.queue.get()
            try:
                await self.score(answer)
            finally:
                self.queue.task_done()

    async def score(self, answer: Answer) -> None:
        """Run every scorer on `answer` and record the scores that apply (a failing scorer is logged, skipped)."""
        model, adapter = answer.request.model, answer.request.adapter
        for scorer in self.scorers:
            try:
                value = await scorer.score(answer)
            except Exception as exc:
                log.warning("quality scorer %s failed: %s", scorer.name, type(exc).__name__)
                continue
            if value is not None:
                self._metrics.quality.labels(answer.service, model, adapter, scorer.name).observe(
                    min(max(value, 0.0), 1.0))
        self.scored += 1

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()


class QualitySampledBackend:
    """A Backend that hands sampled finished answers to a QualityMonitor (see the module docstring)."""

    def __init__(self, backend: Backend, monitor: QualityMonitor) -> None:
        self._backend = backend
        self.monitor = monitor

    def stream(self, kind: ServiceKind, request: GenerationRequest, request_id: str) -> AsyncIterator[Chunk]:
        inner = self._backend.stream(kind, request, request_id)
        if not self.monitor.sampled(request):
            return inner
        return self.monitor.tap(inner, kind.value, request)

    async def probe(self, kind: ServiceKind):
        return await self._backend.probe(kind)


def built_in_scorers(config: ServingConfig, backend: Backend) -> list[Scorer]:
    """The scorers named in `telemetry.quality.scorers`; the judge generates through `backend` (not sampled)."""
    settings = config.telemetry.quality
    made: dict[str, Scorer] = {
        "repetition": FunctionScorer("repetition", repetition_score),
        "length": FunctionScorer("length", length_score),
        "blocked_terms": blocked_terms_scorer(settings.blocked_terms),
        "json_valid": FunctionScorer("json_valid", json_valid_score),
    }
    if "judge" in settings.scorers:
        kind = config.service_for_model(settings.judge_model)
        counter = iter(range(1 << 62))

        def generate(request: GenerationRequest) -> AsyncIterator[Chunk]:
            return backend.stream(kind, request, f"quality-judge-{next(counter)}")

        made["judge"] = JudgeScorer(generate, settings.judge_model, settings.judge_max_tokens)
    return [made[name] for name in settings.scorers]


def with_quality_sampling(config: ServingConfig, backend: Backend, metrics: RouterMetrics) -> Backend:
    """`backend` itself when no answers are sampled (no share configured), else wrapped for sampling."""
    settings = config.telemetry.quality
    if settings.sample_ratio == 0 and not any(settings.sample_ratio_by_model.values()):
        return backend
    return QualitySampledBackend(backend, QualityMonitor(settings, built_in_scorers(config, backend), metrics))

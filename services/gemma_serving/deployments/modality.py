"""ModalityDeployment: the thin Ray Serve shell around one engine, bound three times (text, vision, audio).

It decodes media for its modality, streams engine chunks to the router over the delta channel (`generate_into`), and
exposes the engine's health to Serve.
It never parses protobuf and knows nothing of tenants.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from gemma_serving.adapter_registry import AdapterRegistry
from gemma_serving.config import SERVICE_MODALITIES, ModelConfig, ServiceConfig, ServiceKind, TelemetrySettings
from gemma_serving.deltas.publisher import DeltaPublisher, StreamSink
from gemma_serving.deployments.autoscaling import DIRECT_IN_FLIGHT
from gemma_serving.deployments.direct_calls import DirectCalls
from gemma_serving.deployments.engine_metrics import attach_engine_metrics
from gemma_serving.deployments.pacing import TickWait
from gemma_serving.deployments.health_probe import PROBE_REQUEST_PREFIX, EngineProbe, ProbeReport, ProbeVerdict
from gemma_serving.deployments.streaming import coalesce
from gemma_serving.deployments.tick_window import TickWindow
from gemma_serving.engines.base import Engine
from gemma_serving.engines.types import (
    AudioPart,
    Chunk,
    DecodedAudio,
    DecodedImage,
    GenerationRequest,
    ImagePart,
)
from gemma_serving.errors import GemmaServingError, InvalidRequest
from gemma_serving.media import decode_audio, decode_image
from gemma_serving.telemetry import attributes as attr
from gemma_serving.telemetry.engine_span import traced_engine_stream
from gemma_serving.telemetry.tracing import build_tracer_provider, extract, inject

log = logging.getLogger(__name__)

EngineFactory = Callable[[ServiceKind, ModelConfig, Path], Engine]

#: How long a stopping replica waits for its direct calls in flight (within Serve's graceful_shutdown_timeout_s, 30).
DIRECT_DRAIN_S = 25.0


def vllm_engine_factory(kind: ServiceKind, model: ModelConfig, path: Path) -> Engine:
    """The production engine: vLLM over the model checkpoint at `path`."""
    from gemma_serving.engines.vllm import VllmEngine

    return VllmEngine(model, path, accepts=SERVICE_MODALITIES[kind])


def resolve_checkpoint(source: str) -> Path:
    """A local checkpoint directory for `source` (building the tiny test models on first use)."""
    from gemma_serving.models import resolve_model_source

    return resolve_model_source(source, progress=lambda msg: log.info("model build: %s", msg))


def decode_media(request: GenerationRequest, accepts: tuple[str, ...]) -> GenerationRequest:
    """Replace encoded image/audio parts by decoded ones; reject modalities this service does not take."""
    unsupported = request.modalities() - set(accepts)
    if unsupported:
        raise InvalidRequest(
            f"model {request.model} does not accept {', '.join(sorted(unsupported))} input; it accepts "
            f"{', '.join(accepts)}"
        )

    def decode(part):
        if isinstance(part, ImagePart):
            return DecodedImage(decode_image(part.data))
        if isinstance(part, AudioPart):
            samples, rate = decode_audio(part.data)
            return DecodedAudio(samples, rate)
        return part

    # Only the parts change: tool_calls and tool_call_id (the tool history) stay with their messages.
    messages = tuple(dataclasses.replace(m, parts=tuple(decode(p) for p in m.parts)) for m in request.messages)
    return dataclasses.replace(request, messages=messages)


class ModalityDeployment:
    """Serves one model of one modality. Wrapped with `serve.deployment` by the app builder."""

    async def __init__(
        self,
        kind: str,
        service: dict,
        *,
        telemetry: dict | None = None,
        engine_factory: EngineFactory = vllm_engine_factory,
        checkpoint_resolver: Callable[[str], Path] = resolve_checkpoint,
    ) -> None:
        self.kind = ServiceKind(kind)
        self.config = ServiceConfig.model_validate(service)
        self.accepts = SERVICE_MODALITIES[self.kind]
        settings = TelemetrySettings.model_validate(telemetry or {})
        self._tracer_provider = build_tracer_provider(settings, component=self.kind.value)
        self._tracer = self._tracer_provider.get_tracer(__name__)
        path = await asyncio.to_thread(checkpoint_resolver, self.config.model.source)
        self.engine = engine_factory(self.kind, self.config.model, path)
        # Before start(): vLLM takes its stat loggers when the engine is built.
        memory = attach_engine_metrics(
            self.engine, self.kind.value, self.config.model.name, export=settings.engine_metrics,
            track_load=self.config.deployment.autoscaling.policy == "engine_saturation",
        )
        await self.engine.start()
        self._memory_sampling = asyncio.create_task(memory.run()) if memory is not None else None
        self._probe = EngineProbe(self.engine, self.config.model.name, self.config.deployment.health_probe)
        # LoRA adapters: loaded on first use through Serve model multiplexing (an LRU of max_cpu_loras per replica;
        # the router sends the adapter as the multiplexed model id, so requests prefer replicas that have it).
        self._resolve_adapter = checkpoint_resolver
        self._adapter_sources = {a.name: a.source for a in self.config.model.adapters}
        registry = self.config.model.adapter_registry
        self._registry = AdapterRegistry(registry) if registry else None  # adapters registered at run time
        self.loaded_adapters: set[str] = set()
        self.adapter_loads: dict[str, int] = {}
        self._load_adapter = adapter_multiplexer(self._activate_adapter, self.config.model.engine.max_cpu_loras)
        self._publisher = DeltaPublisher()
        deployment = self.config.deployment
        self._window = TickWindow(deployment.stream_flush_ms / 1000, deployment.stream_flush_max_ms / 1000)
        self._follow_window()
        #: Paced streams whose end left as soon as the engine had it, not at their next tick (describe()).
        self.paced_ends_at_once = 0
        self._direct = None
        if self.config.deployment.direct_calls:
            self._direct = await DirectCalls.in_replica(self.kind.value, self.stream_into, self._publisher,
                                                        self._admits_direct_call)

    async def generate_into(self, request: GenerationRequest, request_id: str, address: str, stream: int) -> None:
        """The router's call: push the request's chunks to router `address`, stream `stream`, over the delta
        channel (batched with every other request's of the same engine step); return when the stream is complete.

        The call stays open for the request's life, so Serve counts it (autoscaling, backpressure); cancelling it
        (client gone, deadline) closes the engine stream, which aborts the request in the engine.
        """
        await self.stream_into(self._publisher.sink(address, stream), request, request_id)

    def _follow_window(self) -> None:
        """The engine's output reads keep the streams' ticks (engines/vllm_outputs.py)."""
        if self._window.seconds and hasattr(self.engine, "pace_output_reads"):
            self.engine.pace_output_reads(self._window.seconds)

    async def stream_into(self, sink: StreamSink, request: GenerationRequest, request_id: str) -> None:
        """Send the request's chunks to `sink` and end it (a Serve call's or a direct call's stream)."""
        window = self._window
        loop = asyncio.get_running_loop()
        tick: TickWait | None = None
        tokens = 0
        async with asyncio.timeout(request.budget_s):  # a backstop: the router enforces the deadline itself
            async for chunk in self._engine_chunks(request, request_id):
                sink.send(chunk)
                pace = window.seconds
                if pace and chunk.finish_reason is None:
                    if tick is None:  # the engine knows the request once it has produced output
                        tick = self._tick_wait(request_id, loop)
                    elif window.sent(chunk.completion_tokens - tokens, loop.time()):
                        self._follow_window()  # a message that waited a tick: the window learns the engine's step
                    tokens = chunk.completion_tokens
                    # Adaptive coalescing: the first delta went at once; the engine keeps generating while this
                    # stream waits, and vLLM merges its deltas meanwhile, so the next pull gets them all in one.
                    # Every stream wakes on the same tick (the next multiple of the window on the loop clock), so
                    # all streams' pulls land in one event-loop pass and leave in one channel message per router;
                    # a stream whose final output is ready wakes at once.
                    await tick.wait(pace - loop.time() % pace)
        sink.end()
        if tick is not None:
            self.paced_ends_at_once += tick.cut_short

    def _tick_wait(self, request_id: str, loop: asyncio.AbstractEventLoop) -> TickWait:
        """A paced stream's tick wait, ended early by the engine when it can tell the request's final output is in
        (the optional `on_final_output` of engines/base.py)."""
        tick = TickWait(loop)
        watch = getattr(self.engine, "on_final_output", None)
        if watch is not None:
            watch(request_id, tick.final)
        return tick

    def _admits_direct_call(self) -> bool:
        """Room for one more request on the engine (Serve-routed ones count too)."""
        return len(getattr(self.engine, "in_flight", ())) < self.config.deployment.max_ongoing_requests

    async def generate(self, request: GenerationRequest, request_id: str) -> AsyncIterator[Chunk]:
        """Stream chunks as Ray streaming items (for callers inside the Serve app that hold a streaming handle;
        the router uses `generate_into`). Deltas ready at once are merged into one item."""
        async for chunk in coalesce(self._engine_chunks(request, request_id), timeout_s=request.budget_s):
            yield chunk

    async def _engine_chunks(self, request: GenerationRequest, request_id: str) -> AsyncIterator[Chunk]:
        """The engine's chunks for `request`, inside the deployment span, after adapter loading and media decoding."""
        span = self._tracer.start_span(
            attr.SPAN_DEPLOYMENT,
            context=extract(request.trace_context),
            attributes={attr.SERVICE: self.kind.value, attr.REQUEST_MODEL: request.model,
                        attr.RESPONSE_ID: request_id},
        )
        try:
            if request.adapter:
                await self._use_adapter(request.adapter)
            if _has_media(request):
                request = await asyncio.to_thread(decode_media, request, self.accepts)
            request = dataclasses.replace(request, trace_context=inject(trace.set_span_in_context(span)))
            stream = traced_engine_stream(self._tracer, span, self.engine.generate(request, request_id=request_id),
                                          model=request.model, request_id=request_id)
            try:
                async for chunk in stream:
                    yield chunk
            finally:
                await stream.aclose()
        except Exception as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()

    async def describe(self) -> dict:
        """Facts for status output and tests: model, engine start time, requests in flight."""
        return {
            "kind": self.kind.value,
            "model": self.config.model.name,
            "engine_start_seconds": getattr(self.engine, "start_seconds", None),
            "paced_ends_at_once": self.paced_ends_at_once,
            "stream_window_ms": round(self._window.seconds * 1000, 1),  # deployments/tick_window.py
            # vLLM engine-core output messages read without pyzmq's asyncio socket (engines/vllm_outputs.py).
            "engine_output_reads": getattr(self.engine, "output_reads", None),
            "engine_paced_output_waits": getattr(self.engine, "paced_output_waits", None),
            # User requests only: a health probe generation in flight is not one.
            "in_flight": sum(not r.startswith(PROBE_REQUEST_PREFIX) for r in getattr(self.engine, "in_flight", ())),
            "engine_load": await self.record_autoscaling_stats(),
            "direct_calls": self._direct.describe() if getattr(self, "_direct", None) is not None else None,
            "adapters": {"loaded": sorted(getattr(self, "loaded_adapters", ())),
                         "loads": dict(getattr(self, "adapter_loads", {})),
                         "multiplexing": "local" if isinstance(getattr(self, "_load_adapter", None),
                                                               LocalMultiplexer) else "serve"},
        }

    async def _use_adapter(self, name: str) -> None:
        """Have adapter `name` loaded for the request; a registered adapter registered again since it was loaded
        (new weights, new LoRA id) is loaded again."""
        loaded = await self._load_adapter(name)
        if self._registry is None or name in self._adapter_sources:
            return
        if not self._registry.is_fresh():
            await asyncio.to_thread(self._registry.entries)  # storage I/O off the event loop
        entry = self._registry.get(name)
        if entry is None:
            raise InvalidRequest(f"adapter '{name[:64]}' is not registered for model {self.config.model.name}",
                                 field="adapter")
        if entry.lora_id != loaded.lora_id:
            loaded.lora_id = (await self._activate_adapter(name)).lora_id

    async def _adapter_source(self, name: str) -> tuple[str, int | None]:
        """A configured adapter's source (its LoRA id is its position), or a registered one's source and id."""
        source = self._adapter_sources.get(name)
        if source is not None:
            return source, None
        entry = await asyncio.to_thread(self._registry.read, name) if self._registry is not None else None
        if entry is None:  # the router validates adapters; this guards direct handle calls
            raise InvalidRequest(f"adapter '{name[:64]}' is not configured or registered for model "
                                 f"{self.config.model.name}", field="adapter")
        return entry.source, entry.lora_id

    async def _activate_adapter(self, name: str) -> LoadedAdapter:
        """Multiplexing's load function: resolve adapter `name` and load it into the engine."""
        source, lora_id = await self._adapter_source(name)
        load = getattr(self.engine, "load_adapter", None)
        if load is None:
            raise InvalidRequest(f"the {self.kind.value} engine does not serve adapters", field="adapter")
        path = await asyncio.to_thread(self._resolve_adapter, source)
        if not (Path(path) / "adapter_config.json").is_file():
            log.error("adapter %s of %s: no adapter_config.json in %s (source %s)", name, self.config.model.name,
                      path, source)
            raise GemmaServingError(f"adapter '{name}' of model {self.config.model.name} is missing on the server")
        began = time.monotonic()
        await (load(name, Path(path)) if lora_id is None else load(name, Path(path), lora_id))
        log.info("adapter %s of %s loaded in %.2f s", name, self.config.model.name, time.monotonic() - began)
        self.loaded_adapters.add(name)
        self.adapter_loads[name] = self.adapter_loads.get(name, 0) + 1

        async def unload() -> None:
            self.loaded_adapters.discard(name)
            unload_adapter = getattr(self.engine, "unload_adapter", None)
            try:
                if unload_adapter is not None:
                    await unload_adapter(name)
                log.info("adapter %s of %s unloaded (least recently used)", name, self.config.model.name)
            except Exception:
                log.warning("adapter %s of %s failed to unload", name, self.config.model.name, exc_info=True)

        return LoadedAdapter(name, unload, lora_id)

    async def check_health(self) -> None:
        """Called periodically by Ray Serve; raising marks the replica unhealthy and gets it replaced."""
        await self.engine.check_health()

    async def health_report(self) -> dict:
        """The router's health probe: raises like check_health when the engine is dead, else the verdict of the
        short-generation probe (ProbeReport as a dict). Never waits for a generation: probes run in the background,
        started here at most once per health_probe.interval_s."""
        await self.engine.check_health()
        report = self._probe.report() if self.config.deployment.health_probe.enabled else None
        return (report or ProbeReport(ProbeVerdict.READY)).as_dict()

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Ray Serve's custom autoscaling metrics hook: the engine's KV-cache usage and running / waiting requests at
        its last step (read by deployments/autoscaling.py); empty until the engine has stepped."""
        load = getattr(self.engine, "load", None)
        current = load() if load is not None else None
        stats = current.as_stats() if current is not None else {}
        direct = getattr(self, "_direct", None)
        if direct is not None:
            stats[DIRECT_IN_FLIGHT] = float(direct.in_flight)
        return stats

    async def __del__(self) -> None:
        memory_sampling = getattr(self, "_memory_sampling", None)
        if memory_sampling is not None:
            memory_sampling.cancel()
        direct = getattr(self, "_direct", None)
        if direct is not None:  # Serve drained its own calls already; the direct ones finish now (bounded)
            await direct.drain(DIRECT_DRAIN_S)
            direct.close()
        probe = getattr(self, "_probe", None)
        if probe is not None:
            probe.stop()
        engine = getattr(self, "engine", None)  # absent when __init__ failed
        if engine is not None:
            await engine.shutdown()
        publisher = getattr(self, "_publisher", None)
        if publisher is not None:
            publisher.close()
        shutdown = getattr(getattr(self, "_tracer_provider", None), "shutdown", None)
        if shutdown is not None:  # flush spans still in the batch
            shutdown()


class LoadedAdapter:
    """The multiplexed "model" for one adapter on a replica. The LRU awaits its `__del__` when evicting it; that is
    an instance attribute, so the garbage collector (which looks `__del__` up on the type) never calls it."""

    def __init__(self, name: str, unload: Callable[[], Awaitable[None]], lora_id: int | None = None) -> None:
        self.name = name
        self.lora_id = lora_id  # a registered adapter's id (None for configured ones)
        self.__del__ = unload


class LocalMultiplexer:
    """`serve.multiplexed`'s contract outside a Serve replica (unit tests, in-process use): load on a miss, keep at
    most `capacity` models, evict the least recently used one (awaiting its `__del__`) first."""

    def __init__(self, load: Callable[[str], Awaitable[Any]], capacity: int) -> None:
        self._load = load
        self._capacity = capacity
        self.models: OrderedDict[str, Any] = OrderedDict()
        self._lock = asyncio.Lock()

    async def __call__(self, model_id: str) -> Any:
        if model_id in self.models:
            self.models.move_to_end(model_id)
            return self.models[model_id]
        async with self._lock:
            if model_id in self.models:
                return self.models[model_id]
            if len(self.models) >= self._capacity:
                _, evicted = self.models.popitem(last=False)
                await evicted.__del__()
            self.models[model_id] = await self._load(model_id)
            return self.models[model_id]


def adapter_multiplexer(load: Callable[[str], Awaitable[Any]], capacity: int) -> Callable[[str], Awaitable[Any]]:
    """`load` behind an LRU of `capacity` adapters: Ray Serve model multiplexing inside a replica (the replica then
    reports its loaded adapters to Serve's router, which sends requests with `multiplexed_model_id` to replicas
    that have the adapter), a local LRU elsewhere."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        serve.get_replica_context()
    except RayServeException:  # not inside a Serve replica
        return LocalMultiplexer(load, capacity)

    async def load_adapter(adapter: str) -> Any:  # a plain function: serve.multiplexed keeps its state on it
        return await load(adapter)

    return serve.multiplexed(max_num_models_per_replica=capacity)(load_adapter)


def _has_media(request: GenerationRequest) -> bool:
    return any(isinstance(p, (ImagePart, AudioPart)) for m in request.messages for p in m.parts)

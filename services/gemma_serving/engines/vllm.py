"""VllmEngine: the Engine protocol over vLLM's public `AsyncLLM` API (streaming, abort, health)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from gemma_serving.config import ModelConfig
from gemma_serving.engines.engine_load import EngineLoad, EngineLoadTracker
from gemma_serving.engines.prompts import chat_messages
from gemma_serving.engines.sampling import to_vllm_fields
from gemma_serving.engines.tool_calls import forced_call_schema
from gemma_serving.engines.types import (
    Chunk,
    DecodedAudio,
    DecodedImage,
    FinishReason,
    GenerationRequest,
    TokenLogprob,
)
from gemma_serving.engines.vllm_outputs import EngineOutputReader, read_engine_outputs_directly
from gemma_serving.errors import EngineDead, GemmaServingError, InvalidRequest

log = logging.getLogger(__name__)

_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.ABORT}


def engine_args(
    model: ModelConfig, model_path: Path, *, accepts: tuple[str, ...], cpu: bool = False
) -> dict[str, Any]:
    """AsyncEngineArgs fields for `model`: typed settings first, then the escape hatch on top.

    `cpu`: the engine runs on vLLM's CPU platform (see `lora_args`)."""
    settings = model.engine
    args: dict[str, Any] = {
        "model": str(model_path),
        "served_model_name": model.name,
        "dtype": settings.dtype,
        "max_model_len": settings.max_model_len,
        "max_num_seqs": settings.max_num_seqs,
        "enforce_eager": settings.enforce_eager,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "quantization": settings.quantization,
        "kv_cache_dtype": settings.kv_cache_dtype,
        # vLLM's periodic log lines stay off; given stat loggers (the engine-load tracker, vLLM's Ray Prometheus
        # logger when engine metrics are exported), vLLM still computes its statistics and hands them over.
        "disable_log_stats": True,
        # llguidance covers the most JSON Schema. Compact JSON: free whitespace costs tokens, and a weak model can
        # spend all of max_tokens on it before closing the object.
        "structured_outputs_config": {"backend": "guidance", "disable_any_whitespace": True},
    }
    limits = {kind: 4 if kind == "image" else 2 for kind in accepts if kind != "text"}
    if limits:
        args["limit_mm_per_prompt"] = limits
    if model.adapters or model.adapter_registry:
        args.update(lora_args(model, cpu=cpu))
    args.update(settings.extra_args)
    return args


def lora_args(model: ModelConfig, *, cpu: bool) -> dict[str, Any]:
    """AsyncEngineArgs fields that enable LoRA adapters for a model that has some."""
    settings = model.engine
    max_loras = settings.max_loras
    if cpu:
        # vLLM's CPU LoRA ops (vllm/lora/ops/torch_ops/lora_ops.py) gather adapter weights with the no-adapter index
        # -1, which selects the LAST adapter slot: once every slot holds an adapter, base-model requests batched with
        # adapter requests silently get that adapter applied (vllm-project/vllm PR #48421, open). Slots fill from the
        # first free one and a model has len(adapters) adapter ids, so one slot more than adapters keeps the last
        # slot empty (zeros) for good. GPU kernels skip index -1 and need no headroom. With a live registry the
        # names are open-ended, but a replica holds at most max_cpu_loras at once (its LRU unloads beyond).
        in_use = settings.max_cpu_loras if model.adapter_registry else len(model.adapters)
        max_loras = max(max_loras, in_use + 1)
    return {
        "enable_lora": True,
        "max_loras": max_loras,
        "max_cpu_loras": max(settings.max_cpu_loras, max_loras),
        "max_lora_rank": settings.max_lora_rank,
    }


def structured_outputs(request: GenerationRequest) -> Any:
    """vLLM structured-output constraint for a forced tool call or a response format, or None."""
    from vllm.sampling_params import StructuredOutputsParams

    schema = forced_call_schema(request.tools, request.tool_choice) if request.tools else None
    if schema is not None:
        return StructuredOutputsParams(json=schema)
    fmt = request.response_format
    if fmt is None:
        return None
    if fmt.kind == "json_schema":
        return StructuredOutputsParams(json=fmt.schema)
    if fmt.kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if fmt.kind == "regex":
        return StructuredOutputsParams(regex=fmt.pattern)
    return StructuredOutputsParams(choice=list(fmt.choices))


def token_logprobs(token_ids, logprobs, top: int) -> tuple[TokenLogprob, ...]:
    """Our TokenLogprobs from vLLM's per-token {token id: Logprob} maps: the sampled token and the `top` most likely
    (by rank), clamped at -9999 as vLLM's server does (JSON has no -inf)."""
    out = []
    for token_id, candidates in zip(token_ids, logprobs):
        sampled = candidates[token_id]
        best = sorted(candidates.values(), key=lambda c: c.rank)[:top]
        out.append(TokenLogprob(sampled.decoded_token or "", max(sampled.logprob, -9999.0),
                                tuple((c.decoded_token or "", max(c.logprob, -9999.0)) for c in best)))
    return tuple(out)


class VllmEngine:
    """One vLLM AsyncLLM serving one model. Not safe to share across event loops."""

    def __init__(self, model: ModelConfig, model_path: Path, *, accepts: tuple[str, ...] = ("text",)) -> None:
        """Callers may append vLLM stat logger factories (e.g. Ray-exported Prometheus metrics) to `stat_loggers`
        before `start()`."""
        self._model = model
        self._path = model_path
        self._accepts = accepts
        self._llm: Any = None
        self._tokenizer: Any = None
        self._output_reader: EngineOutputReader | None = None
        self.start_seconds: float | None = None
        #: Requests between generate() start and their engine-side end (finished or aborted).
        self.in_flight: set[str] = set()
        #: LoRARequest of every adapter loaded once (ids are stable: position in model.adapters, from 1).
        self._lora_requests: dict[str, Any] = {}
        #: Adapters currently loaded into the engine (add_lora'd and not removed since).
        self.loaded_adapters: set[str] = set()
        #: Scheduler statistics of the last engine step (the autoscaling signal), fed once its stat logger
        #: (`load_tracker.stat_logger()`) is among `stat_loggers`.
        self.load_tracker = EngineLoadTracker()
        #: vLLM stat logger factories given to AsyncLLM at start.
        self.stat_loggers: list[Any] = []

    async def start(self) -> None:
        # vLLM on CPU fails to start without an explicit KV cache size (NUMA node 0 reports too little memory).
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self._model.engine.cpu_kv_cache_gib))
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        began = time.monotonic()
        from vllm.config import StructuredOutputsConfig
        from vllm.platforms import current_platform

        fields = engine_args(self._model, self._path, accepts=self._accepts, cpu=current_platform.is_cpu())
        if isinstance(fields.get("structured_outputs_config"), dict):
            fields["structured_outputs_config"] = StructuredOutputsConfig(**fields["structured_outputs_config"])
        args = AsyncEngineArgs(**fields)
        # No stat loggers: vLLM's statistics stay off (disable_log_stats), no per-step stats work.
        self._llm = AsyncLLM.from_engine_args(args, stat_loggers=list(self.stat_loggers) or None)
        # Before the first await: vLLM's output task (created, not yet run) then reads through it from the start.
        self._output_reader = read_engine_outputs_directly(self._llm)
        self._tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, str(self._path))
        self.start_seconds = time.monotonic() - began
        log.info("engine for %s ready in %.1f s", self._model.name, self.start_seconds)

    def _prompt(self, request: GenerationRequest) -> dict[str, Any]:
        if request.raw_prompt:
            # As vLLM's /v1/completions: the text as is, after <bos> (it tokenizes with special tokens; generate()
            # does not add them, so the <bos> is written out).
            return {"prompt": (self._tokenizer.bos_token or "") + request.messages[0].parts[0].text}
        text = self._tokenizer.apply_chat_template(chat_messages(request), tokenize=False, add_generation_prompt=True)
        prompt: dict[str, Any] = {"prompt": text}
        parts = [p for m in request.messages for p in m.parts]
        images = [p.image for p in parts if isinstance(p, DecodedImage)]
        audios = [(p.samples, p.sample_rate) for p in parts if isinstance(p, DecodedAudio)]
        media = {k: v for k, v in (("image", images), ("audio", audios)) if v}
        if media:
            prompt["multi_modal_data"] = media
        return prompt

    def _sampling_params(self, request: GenerationRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            output_kind=RequestOutputKind.DELTA,
            structured_outputs=structured_outputs(request),
            **to_vllm_fields(request.sampling),
        )

    async def generate(self, request: GenerationRequest, *, request_id: str) -> AsyncIterator[Chunk]:
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._llm is None:
            raise EngineDead(f"engine for {self._model.name} is not started")
        lora = None
        if request.adapter:
            # Known once loaded. If the adapter was evicted since, vLLM loads it again from lora_path.
            lora = self._lora_requests.get(request.adapter)
            if lora is None:
                raise InvalidRequest(f"adapter '{request.adapter[:64]}' is not loaded for model {self._model.name}",
                                     field="adapter")
        completion_tokens = 0
        top = request.sampling.top_logprobs or 0
        reader = self._output_reader
        reads = reader.demand(request.sampling.max_tokens) if reader is not None else None
        stream = self._llm.generate(
            self._prompt(request),
            self._sampling_params(request),
            request_id,
            lora_request=lora,
            # The chat template already starts with <bos>; do not add a second one.
            tokenization_kwargs={"add_special_tokens": False},
        )
        self.in_flight.add(request_id)
        try:
            async for out in stream:
                delta = out.outputs[0]
                completion_tokens += len(delta.token_ids)
                if reads is not None:
                    reads.pulled(len(delta.token_ids), completion_tokens)
                finish = _FINISH.get(delta.finish_reason) if out.finished else None
                logprobs = token_logprobs(delta.token_ids, delta.logprobs, top) if delta.logprobs else ()
                yield Chunk(delta.text, len(out.prompt_token_ids or ()), completion_tokens, finish, logprobs=logprobs)
        except EngineDeadError as exc:
            raise EngineDead(f"engine for {self._model.name} died: {type(exc).__name__}") from exc
        except (VLLMClientError, ValueError) as exc:
            raise InvalidRequest(f"model {self._model.name} rejected the request: {exc}") from exc
        finally:
            if reads is not None:  # first: nothing below may keep the reader's counts from settling
                reads.close()
            # Closing the vLLM generator aborts the request in the engine (frees its KV cache) if still running.
            await stream.aclose()
            self.in_flight.discard(request_id)

    @property
    def output_reads(self) -> int | None:
        """Engine-core output messages read by EngineOutputReader (None: read through pyzmq's asyncio socket)."""
        reader = self._output_reader
        return reader.messages if reader is not None else None

    @property
    def paced_output_waits(self) -> int | None:
        """Times the output reader waited for a tick instead of the socket (None: not read by it)."""
        reader = self._output_reader
        return reader.paced_waits if reader is not None else None

    def pace_output_reads(self, window_s: float) -> None:
        """Read the engine's outputs once per stream tick while no request needs them at once
        (engines/vllm_outputs.py, deployment.stream_flush_ms)."""
        reader = self._output_reader
        if reader is not None:
            reader.pace(window_s)

    def on_final_output(self, request_id: str, callback: Callable[[], None]) -> bool:
        """Call `callback` (on the event loop, once or more) as soon as the request's final output, or its error, is
        in vLLM's output collector, before anyone pulls it: a paced stream (deployment.stream_flush_ms) then pulls
        its end at once instead of at its next tick. Reads vLLM 0.32's OutputProcessor (external -> internal request
        ids, each request state's collector); False where those are not there (the stream keeps its ticks)."""
        processor = getattr(self._llm, "output_processor", None)
        internal = getattr(processor, "external_req_ids", {}).get(request_id)
        state = processor.request_states.get(internal[0]) if internal else None
        collector = getattr(state, "queue", None)
        if collector is None or not hasattr(collector, "put"):
            return False
        put = collector.put

        def put_and_tell(output) -> None:
            put(output)
            if getattr(output, "finished", True):  # an exception or STREAM_FINISHED has no `finished`: the end too
                callback()

        collector.put = put_and_tell
        pending = getattr(collector, "output", None)
        if pending is not None and getattr(pending, "finished", True):
            callback()  # already there
        return True

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    async def load_adapter(self, name: str, path: Path, lora_id: int | None = None) -> None:
        """Load LoRA adapter `name` from the PEFT directory `path` into the engine (host memory, bounded by
        max_cpu_loras); requests naming it then run with it. `lora_id`: a registered adapter's id (from the
        registry); configured adapters use their position in model.adapters. Idempotent."""
        from vllm.lora.request import LoRARequest

        if self._llm is None:
            raise EngineDead(f"engine for {self._model.name} is not started")
        ids = {a.name: i for i, a in enumerate(self._model.adapters, start=1)}
        if lora_id is None and name not in ids:
            raise InvalidRequest(f"adapter '{name[:64]}' is not configured for model {self._model.name}",
                                 field="adapter")
        previous = self._lora_requests.get(name)
        lora = LoRARequest(lora_name=name, lora_int_id=lora_id or ids[name], lora_path=str(path),
                           base_model_name=self._model.name)
        if previous is not None and previous.lora_int_id != lora.lora_int_id:
            await self._llm.remove_lora(previous.lora_int_id)  # registered again with new weights
        try:
            await self._llm.add_lora(lora)
        except Exception as exc:
            log.error("adapter %s of %s failed to load from %s: %r", name, self._model.name, path, exc)
            raise GemmaServingError(f"adapter '{name}' of model {self._model.name} failed to load: "
                                    f"{type(exc).__name__}") from exc
        self._lora_requests[name] = lora
        self.loaded_adapters.add(name)

    async def unload_adapter(self, name: str) -> None:
        """Remove adapter `name` from the engine (frees its memory). Requests still running with it finish; a later
        request for it loads it again."""
        lora = self._lora_requests.get(name)
        self.loaded_adapters.discard(name)
        if lora is not None and self._llm is not None:
            await self._llm.remove_lora(lora.lora_int_id)

    def load(self) -> EngineLoad | None:
        """Running and waiting requests and KV-cache usage at the engine's last step (None before the first). An
        engine without requests takes no steps, so its last statistics go stale: idle is reported as empty."""
        latest = self.load_tracker.latest
        if latest is not None and not self.in_flight:
            return EngineLoad(0, 0, 0.0, latest.at)
        return latest

    async def check_health(self) -> None:
        if self._llm is None:
            raise EngineDead(f"engine for {self._model.name} is not started")
        try:
            await self._llm.check_health()
        except Exception as exc:
            raise EngineDead(f"engine for {self._model.name} is unhealthy: {type(exc).__name__}") from exc

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

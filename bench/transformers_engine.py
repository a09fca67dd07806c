"""TransformersEngine: a small batching engine over Hugging Face `generate`, for accelerators without vLLM.

It implements gemma_serving's Engine protocol (start / generate / abort / check_health / shutdown), so the platform
can run it (`build_app(config, engine_factory=transformers_engine_factory)`) and the benchmark can call it in-process,
exactly as it does with `VllmEngine`. It is the engine of the benchmark's `gpu` profile; on CPU it is selectable with
`bench/serving.py --engine transformers` (which is how it is tested here).

Scheduling is static micro-batching: requests that are waiting when a batch starts run together in one
`model.generate` call (up to `max_batch`); requests arriving meanwhile wait for the next batch. Tokens stream per
decoding step through a StoppingCriteria hook (HF's own loop does padding, positions and the KV cache), which also
stops each row at its own max_tokens. Greedy unless a request asks for temperature > 0 (a batch samples with the
temperature of its first request). Closing a request's stream drops its output; its row runs until the batch ends.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))

from gemma_serving.engines.prompts import chat_messages
from gemma_serving.engines.types import Chunk, FinishReason, GenerationRequest
from gemma_serving.errors import EngineDead

log = logging.getLogger(__name__)
_END = object()


def _chat(request: GenerationRequest):
    """HF chat messages as VllmEngine builds them (chat_messages took the messages before it took the request)."""
    import inspect

    first = next(iter(inspect.signature(chat_messages).parameters))
    return chat_messages(request if first == "request" else request.messages)


@dataclass
class _Pending:
    request: GenerationRequest
    request_id: str
    queue: asyncio.Queue
    max_tokens: int
    cancelled: bool = False
    produced: list[int] = field(default_factory=list)
    text: str = ""


class TransformersEngine:
    def __init__(
        self, model_path: Path, *, name: str = "model", device: str | None = None, dtype: str = "auto",
        max_batch: int = 32, default_max_tokens: int = 64,
    ) -> None:
        self._path = str(model_path)
        self._name = name
        self._device = device
        self._dtype = dtype
        self._max_batch = max_batch
        self._default_max_tokens = default_max_tokens
        self._model: Any = None
        self._tokenizer: Any = None
        self._waiting: list[_Pending] = []
        self._wakeup: asyncio.Event | None = None
        self._scheduler: asyncio.Task | None = None
        self.in_flight: set[str] = set()
        self.start_seconds: float | None = None

    async def start(self) -> None:
        began = time.monotonic()
        await asyncio.to_thread(self._load)
        self._wakeup = asyncio.Event()
        self._scheduler = asyncio.create_task(self._schedule())
        self.start_seconds = time.monotonic() - began

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = {"auto": torch.bfloat16 if device == "cuda" else torch.float32}.get(self._dtype) or getattr(
            torch, self._dtype
        )
        self._tokenizer = AutoTokenizer.from_pretrained(self._path)
        self._tokenizer.padding_side = "left"
        self._model = AutoModelForCausalLM.from_pretrained(self._path, dtype=dtype).to(device).eval()
        self._device = device
        eos = self._model.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos])

    async def generate(self, request: GenerationRequest, *, request_id: str) -> AsyncIterator[Chunk]:
        if self._model is None:
            raise EngineDead(f"engine for {self._name} is not started")
        max_tokens = request.sampling.max_tokens or self._default_max_tokens
        pending = _Pending(request, request_id, asyncio.Queue(), max_tokens)
        self.in_flight.add(request_id)
        self._waiting.append(pending)
        self._wakeup.set()
        try:
            while True:
                item = await pending.queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            pending.cancelled = True
            self.in_flight.discard(request_id)

    async def _schedule(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._waiting:
                batch = [p for p in self._waiting[: self._max_batch] if not p.cancelled]
                del self._waiting[: self._max_batch]
                if batch:
                    try:
                        await asyncio.to_thread(self._run_batch, batch, asyncio.get_running_loop())
                    except Exception as exc:
                        log.exception("batch of %d failed", len(batch))
                        for p in batch:
                            p.queue.put_nowait(EngineDead(f"engine for {self._name} failed: {type(exc).__name__}"))

    def _run_batch(self, batch: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        texts = [
            self._tokenizer.apply_chat_template(_chat(p.request), tokenize=False, add_generation_prompt=True)
            for p in batch
        ]
        # The chat template starts with <bos>: do not add a second one.
        inputs = self._tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self._device)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        done = [False] * len(batch)
        tokenizer, eos = self._tokenizer, self._eos

        def emit(i: int, chunk_or_end) -> None:
            loop.call_soon_threadsafe(batch[i].queue.put_nowait, chunk_or_end)

        class Stream(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                newest = input_ids[:, -1].tolist()
                for i, p in enumerate(batch):
                    if done[i]:
                        continue
                    token = newest[i]
                    finished = None
                    if token in eos:
                        finished = FinishReason.STOP
                    else:
                        p.produced.append(token)
                        if len(p.produced) >= p.max_tokens:
                            finished = FinishReason.LENGTH
                    text = tokenizer.decode(p.produced, skip_special_tokens=True)
                    delta, p.text = text[len(p.text):], text
                    n = len(p.produced) + (1 if finished is FinishReason.STOP else 0)
                    if not p.cancelled:
                        emit(i, Chunk(delta, int(prompt_tokens[i]), n, finished))
                    if finished is not None or p.cancelled:
                        done[i] = True
                        emit(i, _END)
                return torch.tensor(done, device=input_ids.device)

        first = batch[0].request.sampling
        sample = bool(first.temperature and first.temperature > 0)
        kwargs: dict[str, Any] = {"do_sample": sample, "top_p": None, "top_k": None}
        if sample:
            kwargs["temperature"] = first.temperature
            if first.seed is not None:
                torch.manual_seed(first.seed)
        with torch.inference_mode():
            self._model.generate(
                **inputs,
                max_new_tokens=max(p.max_tokens for p in batch),
                stopping_criteria=StoppingCriteriaList([Stream()]),
                pad_token_id=self._tokenizer.pad_token_id,
                **kwargs,
            )
        for i in range(len(batch)):
            if not done[i]:
                emit(i, _END)

    async def abort(self, request_id: str) -> None:
        for p in self._waiting:
            if p.request_id == request_id:
                p.cancelled = True

    async def check_health(self) -> None:
        if self._model is None or (self._scheduler is not None and self._scheduler.done()):
            raise EngineDead(f"engine for {self._name} is not running")

    async def shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
        self._model = None


def transformers_engine_factory(kind, model, path) -> TransformersEngine:
    """Engine factory for `build_app(..., engine_factory=...)` (kind and ModelConfig as the platform passes them)."""
    return TransformersEngine(
        path, name=model.name, dtype="auto" if model.engine.dtype == "auto" else model.engine.dtype,
        max_batch=model.engine.max_num_seqs, default_max_tokens=model.default_max_tokens,
    )


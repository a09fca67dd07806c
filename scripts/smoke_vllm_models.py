#!/usr/bin/env python3
"""Smoke-test the tiny Gemma checkpoints in vLLM (``AsyncLLM``, CPU, eager).

Builds the models with ``resolve_model_source("tiny://...")`` and, for each, starts an
``AsyncLLM`` engine and streams requests with ``RequestOutputKind.DELTA``:

* text:    one text prompt;
* vision:  one image prompt (PIL image);
* gemma3n: one audio prompt (1 s, 440 Hz sine, float32 mono 16 kHz) and one image prompt.

Prints the exact prompt strings, prompt token counts, output text, engine start time and
per-request time.  Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/smoke_vllm_models.py [text vision gemma3n]
        [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from pathlib import Path

# vLLM on CPU needs an explicit KV-cache size (NUMA node 0 reports too little memory).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))

ENGINE_KWARGS = {
    "text": dict(max_model_len=2048),
    "vision": dict(max_model_len=1024, limit_mm_per_prompt={"image": 1}),
    "gemma3n": dict(max_model_len=1024, limit_mm_per_prompt={"image": 1, "audio": 1}),
}


def test_image():
    """Return a deterministic 320x240 RGB gradient image."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:240, 0:320]
    rgb = np.stack([x * 255 // 319, y * 255 // 239, (x + y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def test_audio():
    """Return (samples, sample_rate): 1 s of a 440 Hz sine, float32 mono at 16 kHz."""
    import numpy as np

    t = np.arange(16000, dtype=np.float32) / 16000.0
    return (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32), 16000


def requests_for(name: str, tokenizer) -> list[tuple[str, list[dict], dict]]:
    """Return (label, HF messages, multi_modal_data) triples for model ``name``."""
    text_msg = [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Write a haiku about the sea."},
    ]
    image_msg = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    audio_msg = [{"role": "user", "content": [
        {"type": "audio"}, {"type": "text", "text": "Transcribe this audio."}]}]
    if name == "text":
        return [("text", text_msg, {})]
    if name == "vision":
        return [("image", image_msg, {"image": test_image()})]
    return [("audio", audio_msg, {"audio": test_audio()}), ("image", image_msg, {"image": test_image()})]


async def run_model(name: str, cache_dir: Path | None) -> dict:
    """Start an engine for tiny model ``name``, run its requests, shut it down; return timings."""
    from gemma_serving.models import resolve_model_source
    from transformers import AutoTokenizer
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    path = resolve_model_source(f"tiny://{name}", cache_dir)
    size_mb = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    print(f"\n=== {name}: {path} ({size_mb:.1f} MB)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    args = AsyncEngineArgs(model=str(path), enforce_eager=True, disable_log_stats=True,
                           **ENGINE_KWARGS[name])
    print(f"AsyncEngineArgs(model=..., enforce_eager=True, {ENGINE_KWARGS[name]})")
    t0 = time.perf_counter()
    engine = AsyncLLM.from_engine_args(args)
    start_s = time.perf_counter() - t0
    print(f"engine start: {start_s:.1f} s")
    result = {"model": name, "size_mb": size_mb, "start_s": start_s, "requests": []}
    try:
        for i, (label, messages, mm_data) in enumerate(requests_for(name, tokenizer)):
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            engine_prompt = {"prompt": prompt}
            if mm_data:
                engine_prompt["multi_modal_data"] = mm_data
            params = SamplingParams(max_tokens=16, temperature=0.0,
                                    output_kind=RequestOutputKind.DELTA)
            t1 = time.perf_counter()
            text, n_prompt, first_ids, chunks = "", None, None, 0
            # The chat template already renders <bos>: don't let the tokenizer add a second one.
            async for out in engine.generate(engine_prompt, params, request_id=f"{name}-{i}",
                                             tokenization_kwargs={"add_special_tokens": False}):
                chunks += 1
                if out.prompt_token_ids is not None and n_prompt is None:
                    n_prompt, first_ids = len(out.prompt_token_ids), list(out.prompt_token_ids[:3])
                text += out.outputs[0].text
            req_s = time.perf_counter() - t1
            print(f"--- {name}/{label}: messages={messages!r}")
            print(f"prompt string: {prompt!r}")
            print(f"multi_modal_data: { {k: _describe(v) for k, v in mm_data.items()} }")
            print(f"prompt tokens: {n_prompt} (first ids {first_ids}); chunks: {chunks}; "
                  f"request: {req_s:.2f} s")
            print(f"output: {text!r}")
            result["requests"].append({"label": label, "prompt_tokens": n_prompt, "seconds": req_s})
        if name == "text":
            # Show what happens without add_special_tokens=False: vLLM's default tokenization
            # of a raw prompt adds the tokenizer's <bos> in front of the template's <bos>.
            prompt = tokenizer.apply_chat_template(requests_for(name, tokenizer)[0][1],
                                                   tokenize=False, add_generation_prompt=True)
            params = SamplingParams(max_tokens=1, output_kind=RequestOutputKind.DELTA)
            async for out in engine.generate({"prompt": prompt}, params, request_id="text-bos"):
                if out.prompt_token_ids is not None:
                    print(f"default tokenization (no tokenization_kwargs): first ids "
                          f"{list(out.prompt_token_ids[:3])}")
                    break
    finally:
        engine.shutdown()
        del engine
        gc.collect()  # run AsyncLLM.__del__ now, not during interpreter teardown
    return result


def _describe(value) -> str:
    if isinstance(value, tuple):
        arr, sr = value
        return f"(ndarray{tuple(arr.shape)} {arr.dtype}, {sr})"
    return f"{type(value).__name__} {getattr(value, 'size', '')}"


def main() -> int:
    """Parse arguments and smoke-test each requested model in turn."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=["text", "vision", "gemma3n"])
    parser.add_argument("--cache-dir", type=Path, default=None)
    opts = parser.parse_args()
    results = [asyncio.run(run_model(name, opts.cache_dir)) for name in opts.models]
    print("\n=== summary")
    for r in results:
        reqs = ", ".join(f"{q['label']} {q['prompt_tokens']} tok {q['seconds']:.2f} s" for q in r["requests"])
        print(f"{r['model']}: {r['size_mb']:.1f} MB, engine start {r['start_s']:.1f} s; {reqs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

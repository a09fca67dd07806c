"""gRPC load generator for gemma-serving (and anything that streams text the same way).

Two load shapes:

* closed loop, fixed concurrency: `c` workers each send their next request as soon as the previous one ended
  (a ladder such as 1 / 8 / 32 / 64);
* open loop, Poisson arrivals at `rate` requests/s (exponential inter-arrival times, fixed seed), whatever the
  server's speed: queueing shows up as growing time to first token.

Per request it records time to first token (TTFT: request sent -> first chunk with text), the gaps between chunks,
end-to-end latency, output tokens (from the final chunk's usage when the target reports it) and the gRPC status on
failure. A run is summarised as p50/p90/p99 of TTFT, inter-token latency (ITL, per request:
(e2e - ttft) / (output tokens - 1), i.e. time per output token after the first, as `vllm bench` reports it), gaps
between chunks and e2e, plus output tokens/s, requests/s and errors by status code.

Use it against a running router:

    .venv/bin/python bench/loadgen.py --target 127.0.0.1:50051 --model gemma-3-tiny --concurrency 1,8,32 \\
        --requests 64 --max-tokens 64
    .venv/bin/python bench/loadgen.py --target 127.0.0.1:50051 --model gemma-3-tiny --rate 4,8 --requests 64

Targets are small classes with `async def stream(prompt, sampling) -> AsyncIterator[(text, completion_tokens)]`;
`GrpcTarget` speaks gemma.serving.v1 `GenerateStream`, `EngineTarget` (in bench/serving.py's engine worker) calls an
`Engine` in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))

#: Words the synthetic prompts are drawn from (fixed: every target gets the very same prompts).
_WORDS = ["the", "model", "serves", "requests", "over", "grpc", "with", "ray", "and", "vllm", "on", "small", "cpu", "machines", "while", "a", "router", "validates", "streams", "tokens", "back", "to", "clients", "who", "measure", "latency", "throughput", "and", "errors", "under", "load", "for", "every", "request", "gemma", "answers", "questions", "about", "images", "audio", "and", "text", "in", "many", "languages", "with", "short", "and", "long", "context"]


def make_prompts(n: int = 64, *, seed: int = 1234, min_words: int = 8, max_words: int = 48) -> list[str]:
    """`n` distinct deterministic prompts of varying length."""
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(min_words, max_words))]
        prompts.append(f"Request {i}: " + " ".join(words) + ".")
    return prompts


@dataclass(frozen=True)
class SamplingSpec:
    """The sampling every target uses: greedy (temperature 0), fixed seed, at most `max_tokens` new tokens."""

    max_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    #: Generate exactly max_tokens (vLLM's ignore_eos): fixed-length requests for token-path comparisons.
    ignore_eos: bool = False


class Target(Protocol):
    name: str

    def stream(self, prompt: str, sampling: SamplingSpec) -> AsyncIterator[tuple[str, int | None]]:
        """Yield (text delta, completion tokens so far or None) per chunk; raise on failure."""


def error_code(exc: BaseException) -> str:
    """A short status name for a failed request (gRPC status code name, else the exception type)."""
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            return code().name
        except (AttributeError, TypeError, ValueError):
            pass
    return type(exc).__name__


class GrpcTarget:
    """gemma.serving.v1.Inference/GenerateStream over one grpc.aio channel (HTTP/2 multiplexes the streams)."""

    def __init__(self, address: str, model: str, *, name: str = "grpc", metadata: tuple = (), timeout_s: float = 300):
        self.name = name
        self.address = address
        self.model = model
        self.metadata = metadata
        self.timeout_s = timeout_s
        self._channel = None
        self._stub = None

    async def open(self) -> None:
        import grpc
        from gemma_serving.api import inference_pb2_grpc as pb_grpc

        self._channel = grpc.aio.insecure_channel(
            self.address, options=[("grpc.max_receive_message_length", 64 * 2**20)]
        )
        await asyncio.wait_for(self._channel.channel_ready(), 60)
        self._stub = pb_grpc.InferenceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    def parts(self, prompt: str) -> list:
        """The user message's parts (override to send images or audio with the prompt)."""
        from gemma_serving.api import inference_pb2 as pb

        return [pb.Part(text=prompt)]

    async def stream(self, prompt: str, sampling: SamplingSpec) -> AsyncIterator[tuple[str, int | None]]:
        from gemma_serving.api import inference_pb2 as pb

        request = pb.GenerateRequest(
            model=self.model,
            messages=[pb.Message(role="user", parts=self.parts(prompt))],
            sampling=pb.SamplingParams(
                max_tokens=sampling.max_tokens, temperature=sampling.temperature, seed=sampling.seed,
                ignore_eos=sampling.ignore_eos,
            ),
        )
        call = self._stub.GenerateStream(request, metadata=self.metadata, timeout=self.timeout_s)
        async for chunk in call:
            tokens = chunk.usage.completion_tokens if chunk.HasField("usage") else None
            yield chunk.text, tokens


class EngineTarget:
    """Calls an Engine's generate() in-process (no gRPC, no Ray)."""

    def __init__(self, engine, model: str, name: str = "engine") -> None:
        self.engine = engine
        self.model = model
        self.name = name

    async def stream(self, prompt: str, sampling: SamplingSpec) -> AsyncIterator[tuple[str, int | None]]:
        from gemma_serving.engines.types import GenerationRequest, Message, Sampling, TextPart

        request = GenerationRequest(
            self.model,
            (Message("user", (TextPart(prompt),)),),
            Sampling(max_tokens=sampling.max_tokens, temperature=sampling.temperature, seed=sampling.seed,
                     ignore_eos=sampling.ignore_eos),
        )
        gen = self.engine.generate(request, request_id=uuid.uuid4().hex)
        try:
            async for chunk in gen:
                yield chunk.text, chunk.completion_tokens
        finally:
            await gen.aclose()


class OpenAIChatTarget:
    """POST /v1/chat/completions with stream=true (SSE) on any OpenAI-compatible server (ours, vLLM's, Ray Serve
    LLM's); usage from `stream_options.include_usage`. One aiohttp session, a connection per concurrent stream."""

    def __init__(self, base_url: str, model: str, *, name: str = "openai", timeout_s: float = 300) -> None:
        self.name, self.url, self.model, self.timeout_s = name, base_url.rstrip("/") + "/v1/chat/completions", model, timeout_s
        self._session = None

    async def open(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                              timeout=aiohttp.ClientTimeout(total=self.timeout_s))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def stream(self, prompt: str, sampling: SamplingSpec) -> AsyncIterator[tuple[str, int | None]]:
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "stream": True,
                "max_tokens": sampling.max_tokens, "temperature": sampling.temperature, "seed": sampling.seed,
                "stream_options": {"include_usage": True}}
        if sampling.ignore_eos:
            body["ignore_eos"] = True
        async with self._session.post(self.url, json=body) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            async for line in response.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(f"stream error: {event['error'].get('code')}")
                usage = event.get("usage")
                choices = event.get("choices") or []
                text = (choices[0].get("delta") or {}).get("content") or "" if choices else ""
                if text:
                    yield text, None
                elif usage:  # the usage-only chunk at the end: the exact token count
                    yield "", usage["completion_tokens"]


@dataclass
class RequestRecord:
    sent: float  # perf_counter seconds, relative to the run's start
    ttft: float | None = None
    e2e: float | None = None
    chunks: int = 0
    output_tokens: int = 0
    tokens_reported: bool = False
    gaps: list[float] = field(default_factory=list)
    error: str | None = None
    scheduled: float | None = None  # Poisson: when it was due (lateness of the generator itself shows here)


async def one_request(target: Target, prompt: str, sampling: SamplingSpec, t0: float) -> RequestRecord:
    sent = time.perf_counter()
    rec = RequestRecord(sent=sent - t0)
    last = sent
    tokens_seen: int | None = None
    chars = 0
    try:
        async for text, tokens in target.stream(prompt, sampling):
            now = time.perf_counter()
            # Every chunk counts (an engine delta always carries at least one token, even when its text is empty).
            if rec.ttft is None:
                rec.ttft = now - sent
            else:
                rec.gaps.append(now - last)
            last = now
            rec.chunks += 1
            chars += len(text)
            if tokens is not None:
                tokens_seen = tokens
        rec.e2e = time.perf_counter() - sent
        if tokens_seen is not None:
            rec.output_tokens, rec.tokens_reported = tokens_seen, True
        else:
            rec.output_tokens = rec.chunks  # targets without usage: one token per chunk (documented per target)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is counted by status; the run goes on
        rec.error = error_code(exc)
    return rec


async def run_closed(
    target: Target, prompts: list[str], sampling: SamplingSpec, *, concurrency: int, requests: int
) -> list[RequestRecord]:
    """`concurrency` workers, `requests` requests in all; prompt i goes to request i (mod len(prompts))."""
    records: list[RequestRecord] = []
    next_index = 0
    t0 = time.perf_counter()

    async def worker() -> None:
        nonlocal next_index
        while next_index < requests:
            i = next_index
            next_index += 1
            records.append(await one_request(target, prompts[i % len(prompts)], sampling, t0))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


async def run_poisson(
    target: Target, prompts: list[str], sampling: SamplingSpec, *, rate: float, requests: int, seed: int = 7
) -> list[RequestRecord]:
    """Open loop: `requests` requests with exponential inter-arrival times at `rate` per second."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    due = 0.0
    tasks = []
    for i in range(requests):
        delay = t0 + due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        scheduled = due

        async def go(i=i, scheduled=scheduled) -> RequestRecord:
            rec = await one_request(target, prompts[i % len(prompts)], sampling, t0)
            rec.scheduled = scheduled
            return rec

        tasks.append(asyncio.create_task(go()))
        due += rng.expovariate(rate)
    return list(await asyncio.gather(*tasks))


def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float | None]:
    """p50/p90/p99/mean (linear interpolation between order statistics), scaled (default: seconds -> ms)."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "n": 0}
    s = sorted(values)

    def q(p: float) -> float:
        k = (len(s) - 1) * p / 100
        lo, hi = math.floor(k), math.ceil(k)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)

    return {
        "p50": round(q(50) * scale, 3),
        "p90": round(q(90) * scale, 3),
        "p99": round(q(99) * scale, 3),
        "mean": round(statistics.fmean(s) * scale, 3),
        "n": len(s),
    }


def summarize(records: list[RequestRecord], **labels: Any) -> dict[str, Any]:
    ok = [r for r in records if r.error is None]
    errors = Counter(r.error for r in records if r.error is not None)
    if ok:
        start = min(r.sent for r in records)
        end = max(r.sent + r.e2e for r in ok)
        duration = max(end - start, 1e-9)
    else:
        duration = float("nan")
    tokens = sum(r.output_tokens for r in ok)
    # Targets that send the whole answer as one chunk have no inter-token latency: leave them out.
    itl = [(r.e2e - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1 and r.chunks > 1]
    out: dict[str, Any] = {
        **labels,
        "requests": len(records),
        "ok": len(ok),
        "errors": dict(sorted(errors.items())),
        "duration_s": round(duration, 3),
        "requests_per_s": round(len(ok) / duration, 3) if ok else 0.0,
        "output_tokens_per_s": round(tokens / duration, 1) if ok else 0.0,
        "output_tokens_total": tokens,
        "output_tokens_mean": round(tokens / len(ok), 2) if ok else None,
        "output_tokens_min": min((r.output_tokens for r in ok), default=None),
        "tokens_from_usage": all(r.tokens_reported for r in ok) if ok else None,
        "chunks_per_request_mean": round(statistics.fmean(r.chunks for r in ok), 2) if ok else None,
        "ttft_ms": percentiles([r.ttft for r in ok if r.ttft is not None]),
        "itl_ms": percentiles(itl),
        "chunk_gap_ms": percentiles([g for r in ok for g in r.gaps]),
        "e2e_ms": percentiles([r.e2e for r in ok]),
    }
    late = [r.sent - r.scheduled for r in records if r.scheduled is not None]
    if late:
        out["send_lateness_ms"] = percentiles(late)
    return out


def short(summary: dict[str, Any]) -> str:
    """One progress line for a summary."""
    load = f"c={summary['concurrency']}" if "concurrency" in summary else f"rate={summary.get('rate')}/s"
    errs = f" errors={summary['errors']}" if summary["errors"] else ""
    return (
        f"{summary.get('target', '?'):>9} {load:>10}: {summary['output_tokens_per_s']:8.1f} tok/s "
        f"{summary['requests_per_s']:6.2f} req/s  ttft p50/p99 {summary['ttft_ms']['p50']}/{summary['ttft_ms']['p99']} ms"
        f"  itl p50 {summary['itl_ms']['p50']} ms  e2e p50/p99 {summary['e2e_ms']['p50']}/{summary['e2e_ms']['p99']} ms"
        f"  tokens/req {summary['output_tokens_mean']}  chunks/req {summary['chunks_per_request_mean']}{errs}"
    )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


async def _cli(args: argparse.Namespace) -> list[dict[str, Any]]:
    metadata = (("application", args.application),) if args.application else ()
    target = GrpcTarget(args.target, args.model, name="grpc", metadata=metadata)
    await target.open()
    prompts = make_prompts(args.prompts)
    sampling = SamplingSpec(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    results = []
    try:
        await run_closed(target, prompts, sampling, concurrency=2, requests=args.warmup)  # warm-up, not reported
        for c in _ints(args.concurrency or ""):
            recs = await run_closed(target, prompts, sampling, concurrency=c, requests=max(args.requests, c))
            results.append(summarize(recs, target="grpc", mode="closed", concurrency=c))
            print(short(results[-1]), flush=True)
        for rate in _floats(args.rate or ""):
            recs = await run_poisson(target, prompts, sampling, rate=rate, requests=args.requests)
            results.append(summarize(recs, target="grpc", mode="poisson", rate=rate))
            print(short(results[-1]), flush=True)
    finally:
        await target.close()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="127.0.0.1:50051", help="router address host:port")
    p.add_argument("--model", default="gemma-3-tiny")
    p.add_argument("--application", default="", help="send ('application', NAME) metadata (Serve's gRPC proxy)")
    p.add_argument("--concurrency", default="1,8,32,64", help="closed-loop ladder, comma separated ('' = none)")
    p.add_argument("--rate", default="", help="Poisson request rates per second, comma separated")
    p.add_argument("--requests", type=int, default=64, help="requests per step (closed loop: at least c)")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the summaries as JSON here")
    args = p.parse_args()
    results = asyncio.run(_cli(args))
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results, "args": vars(args)}, indent=2) + "\n")


if __name__ == "__main__":
    main()


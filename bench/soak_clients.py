"""The soak's clients: streaming calls back to back on the gRPC surface (GenerateStream) or the OpenAI surface
(POST /v1/chat/completions, stream: true, usage included), each client as one tenant, until the load's time is up.

Both surfaces send the same requests (text, image+text, audio+text; media encoded once, images as data: URLs and
audio as `input_audio` parts on HTTP). A call is OK when its stream ended with finish reason stop or length (and, on
HTTP, `data: [DONE]`). Refusals for overload or quota, RESOURCE_EXHAUSTED on gRPC and HTTP 429, share one code
(RESOURCE_EXHAUSTED) and the same back-off; any other HTTP status is HTTP_<status>, an error event in the stream
STREAM_ERROR, a timeout DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import httpx
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.client import audio_part, image_part, message
from gemma_serving.client.samples import sample_png, sample_wav
from soak_memory import RouterMemory
from soak_platform import KINDS, Tenant, tenant_index

SURFACES = ("grpc", "openai")
FINISHED = ("FINISH_REASON_STOP", "FINISH_REASON_LENGTH")
PROMPTS = ["Tell me a story about a lighthouse.", "List three prime numbers.", "Explain gRPC in one paragraph.",
           "Write a haiku about the sea.", "What is the capital of France?", "Summarize the plot of Hamlet."]


@dataclass
class Call:
    surface: str
    tenant: str
    kind: str
    code: str
    began: float  # seconds since the soak started
    seconds: float  # end to end
    first_chunk_s: float | None  # time to the first chunk (gRPC) or event (SSE)
    chunks: int
    completion_tokens: int
    prompt_tokens: int
    finish_reason: str
    details: str = ""


@dataclass
class Tally:
    """What one streaming call has seen so far."""

    began: float = field(default_factory=time.monotonic)
    first_chunk_s: float | None = None
    chunks: int = 0
    finish_reason: str = "FINISH_REASON_UNSPECIFIED"
    completion_tokens: int = 0
    prompt_tokens: int = 0
    code: str = "OK"
    details: str = ""

    def chunk(self) -> None:
        if self.first_chunk_s is None:
            self.first_chunk_s = time.monotonic() - self.began
        self.chunks += 1

    def fail(self, code: str, details: str) -> None:
        self.code, self.details = code, details[:300]

    def check_finished(self) -> None:
        if self.code == "OK" and self.finish_reason not in FINISHED:
            self.fail("BAD_STREAM", f"stream ended with {self.finish_reason} after {self.chunks} chunks")

    def call(self, surface: str, tenant: str, kind: str, t0: float) -> Call:
        return Call(surface, tenant, kind, self.code, self.began - t0, time.monotonic() - self.began,
                    self.first_chunk_s, self.chunks, self.completion_tokens, self.prompt_tokens, self.finish_reason,
                    self.details)


def http_code(status: int) -> str:
    """The soak's code for a refused HTTP call: 429 is the allowed RESOURCE_EXHAUSTED, anything else HTTP_<status>."""
    return "RESOURCE_EXHAUSTED" if status == 429 else f"HTTP_{status}"


def read_sse(tally: Tally, line: str) -> bool:
    """Feed one line of a chat completion's event stream into `tally`; True at `data: [DONE]`."""
    if not line.startswith("data:"):
        return False
    data = line[5:].strip()
    if data == "[DONE]":
        return True
    event = json.loads(data)
    if "error" in event:
        error = event["error"]
        code = "RESOURCE_EXHAUSTED" if error.get("type") == "rate_limit_error" else "STREAM_ERROR"
        tally.fail(code, f"{error.get('code')}: {error.get('message')}")
        return False
    choices = event.get("choices") or []
    if choices:
        tally.chunk()
    for choice in choices:
        if choice.get("finish_reason"):
            tally.finish_reason = f"FINISH_REASON_{choice['finish_reason'].upper()}"
    if event.get("usage"):
        tally.completion_tokens = event["usage"]["completion_tokens"]
        tally.prompt_tokens = event["usage"]["prompt_tokens"]
    return False


def build_requests(models: dict[str, str], max_tokens: int) -> dict[str, dict[str, list]]:
    """surface -> service -> a few requests (gRPC messages, OpenAI bodies), the same prompts and media on both."""
    png, wav = sample_png(), sample_wav(seconds=1.0)
    png_url = "data:image/png;base64," + base64.b64encode(png).decode()
    wav_part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}
    out: dict[str, dict[str, list]] = {surface: {kind: [] for kind in KINDS} for surface in SURFACES}
    for kind in KINDS:
        model = models.get(kind, kind)
        for i, prompt in enumerate(PROMPTS):
            parts = {"text": [prompt], "vision": [image_part(png, "image/png"), prompt],
                     "audio": [audio_part(wav, "audio/wav"), prompt]}[kind]
            sampling = pb.SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=1000 + i)
            out["grpc"][kind].append(pb.GenerateRequest(model=model, messages=[message(*parts)], sampling=sampling))
            text = {"type": "text", "text": prompt}
            content = {"text": prompt, "vision": [{"type": "image_url", "image_url": {"url": png_url}}, text],
                       "audio": [wav_part, text]}[kind]
            out["openai"][kind].append({
                "model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                "temperature": 1.0, "seed": 1000 + i, "stream": True, "stream_options": {"include_usage": True}})
    return out


class GrpcCaller:
    """GenerateStream calls over one grpc.aio channel, with the tenant's key as metadata."""

    def __init__(self, target: str, tenant: Tenant) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = pb_grpc.InferenceStub(self._channel)
        self._metadata = tuple(tenant.headers.items()) or None

    async def call(self, request: pb.GenerateRequest, timeout_s: float) -> Tally:
        tally = Tally()
        try:
            async for chunk in self._stub.GenerateStream(request, timeout=timeout_s, metadata=self._metadata):
                tally.chunk()
                if chunk.finish_reason:
                    tally.finish_reason = pb.FinishReason.Name(chunk.finish_reason)
                    tally.completion_tokens = chunk.usage.completion_tokens
                    tally.prompt_tokens = chunk.usage.prompt_tokens
            tally.check_finished()
        except grpc.aio.AioRpcError as err:
            tally.fail(err.code().name, err.details() or "")
        return tally

    async def close(self) -> None:
        await self._channel.close()


class OpenAICaller:
    """Streaming chat completions over one httpx.AsyncClient, with the tenant's key as `Authorization: Bearer`."""

    def __init__(self, base_url: str, tenant: Tenant, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, headers=tenant.headers, timeout=None, transport=transport)

    async def call(self, body: dict, timeout_s: float) -> Tally:
        tally = Tally()
        try:
            async with asyncio.timeout(timeout_s):
                async with self._http.stream("POST", "/v1/chat/completions", json=body) as response:
                    if response.status_code != 200:
                        tally.fail(http_code(response.status_code), (await response.aread()).decode(errors="replace"))
                        return tally
                    done = False
                    async for line in response.aiter_lines():
                        done = read_sse(tally, line) or done
            if not done and tally.code == "OK":
                tally.fail("BAD_STREAM", f"stream ended before data: [DONE] after {tally.chunks} chunks")
            tally.check_finished()
        except TimeoutError:
            tally.fail("DEADLINE_EXCEEDED", f"no end of stream within {timeout_s} s")
        except httpx.HTTPError as err:
            tally.fail("TRANSPORT_ERROR", f"{type(err).__name__}: {err}")
        return tally

    async def close(self) -> None:
        await self._http.aclose()


CALLERS = {"grpc": GrpcCaller, "openai": OpenAICaller}


@dataclass(frozen=True)
class Client:
    index: int
    surface: str
    tenant: Tenant


def plan_clients(clients: int, surfaces: tuple[str, ...], tenants: list[Tenant]) -> list[Client]:
    """Tenants round-robin; surfaces alternate per round of tenants, so every tenant gets each surface (given
    clients >= surfaces x tenants) and the surfaces split the clients evenly."""
    return [Client(i, surfaces[(i // len(tenants)) % len(surfaces)], tenants[tenant_index(i, len(tenants))])
            for i in range(clients)]


@dataclass(frozen=True)
class LoadSettings:
    seconds: float
    mix: dict[str, float]
    seed: int = 0
    request_timeout: float = 120
    progress_every: float = 10
    warmup_seconds: float = 10


async def run_load(targets: dict[str, str], clients: list[Client], requests: dict[str, dict[str, list]],
                   settings: LoadSettings, memory: RouterMemory) -> tuple[list[Call], dict]:
    """Every client calls back to back until `settings.seconds` have passed (calls in flight then finish);
    `targets`: surface -> gRPC host:port or HTTP base URL. The router's RSS is sampled at start, after the warm-up
    and at every progress line."""
    weights = settings.mix
    kinds = [k for k in KINDS if weights[k] > 0]
    calls: list[Call] = []
    in_flight = 0
    t0 = time.monotonic()
    stop_at = t0 + settings.seconds
    progress: list[dict] = []

    async def client(spec: Client) -> None:
        nonlocal in_flight
        rng = random.Random(settings.seed * 1000 + spec.index)
        caller = CALLERS[spec.surface](targets[spec.surface], spec.tenant)
        try:
            while time.monotonic() < stop_at:
                kind = rng.choices(kinds, [weights[k] for k in kinds])[0]
                in_flight += 1
                try:
                    tally = await caller.call(rng.choice(requests[spec.surface][kind]), settings.request_timeout)
                finally:
                    in_flight -= 1
                calls.append(tally.call(spec.surface, spec.tenant.id, kind, t0))
                if tally.code == "RESOURCE_EXHAUSTED":
                    await asyncio.sleep(0.2 + rng.random() * 0.3)  # back off as a retry-after client would
        finally:
            await caller.close()

    async def report_progress() -> None:
        last_n, last_tokens, last_t = 0, 0, t0
        while True:
            await asyncio.sleep(settings.progress_every)
            now = time.monotonic()
            tokens = sum(c.completion_tokens for c in calls)
            codes = Counter(c.code for c in calls)
            rss = memory.sample()
            line = {"t_s": round(now - t0, 1), "done": len(calls), "in_flight": in_flight, "codes": dict(codes),
                    "req_per_s": round((len(calls) - last_n) / (now - last_t), 2),
                    "tokens_per_s": round((tokens - last_tokens) / (now - last_t), 1),
                    "router_rss_mib": None if rss is None else round(rss, 1)}
            progress.append(line)
            print(f"[{line['t_s']:6.1f} s] done {line['done']:5d}  in flight {in_flight:3d}  "
                  f"{line['req_per_s']:6.2f} req/s  {line['tokens_per_s']:7.1f} tok/s  "
                  f"router RSS {line['router_rss_mib'] or '-'} MiB  codes {dict(codes)}", flush=True)
            last_n, last_tokens, last_t = len(calls), tokens, now

    async def warm_up() -> None:
        await asyncio.sleep(settings.warmup_seconds)
        memory.mark_warm()

    memory.sample()
    background = [asyncio.create_task(report_progress()), asyncio.create_task(warm_up())]
    try:
        await asyncio.gather(*(client(spec) for spec in clients))
    finally:
        for task in background:
            task.cancel()
    return calls, {"wall_s": round(time.monotonic() - t0, 2), "progress": progress}

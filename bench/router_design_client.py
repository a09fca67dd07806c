"""The router design benchmark's client side: the measurements run against each design over loopback gRPC
(sequential and concurrent unary calls, streams, and whether a client cancel reaches the engine)."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import grpc
from bench_common import now, progress
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from router_design_servers import CANCEL_ATTEMPTS, CANCEL_WAIT_S, LONG_TOKENS, MODEL, STREAM_TOKENS, read_events


def request(max_tokens: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=MODEL,
        messages=[pb.Message(role="user", parts=[pb.Part(text="hello there, how are you")])],
        sampling=pb.SamplingParams(max_tokens=max_tokens),
    )


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def ms(x: float) -> float:
    return round(x * 1000, 3)


async def unary_sequential(stub, md, n: int) -> dict:
    req = request(1)
    lat = []
    for _ in range(n):
        t = now()
        await stub.Generate(req, metadata=md, timeout=30)
        lat.append(now() - t)
    return {"calls": n, "p50_ms": ms(pct(lat, 50)), "p99_ms": ms(pct(lat, 99)), "mean_ms": ms(statistics.mean(lat))}


async def run_concurrently(call, n: int, c: int) -> tuple[float, list[str]]:
    """`n` calls of `call()` from `c` workers; the wall time, and the gRPC status names of the calls that failed."""
    errors: list[str] = []
    remaining = n

    async def worker():
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            try:
                await call()
            except grpc.aio.AioRpcError as e:
                errors.append(e.code().name)

    t0 = now()
    await asyncio.gather(*(worker() for _ in range(c)))
    return now() - t0, errors


async def unary_concurrent(stub, md, n: int, c: int) -> dict:
    req = request(1)
    lat: list[float] = []

    async def call():
        t = now()
        await stub.Generate(req, metadata=md, timeout=60)
        lat.append(now() - t)

    elapsed, errors = await run_concurrently(call, n, c)
    return {
        "calls": n,
        "concurrency": c,
        "rps": round(len(lat) / elapsed, 1),
        "p50_ms": ms(pct(lat, 50)),
        "p99_ms": ms(pct(lat, 99)),
        "errors": len(errors),
        "error_codes": sorted(set(errors)),
    }


async def streams(stub, md, n: int, c: int) -> dict:
    req = request(STREAM_TOKENS)
    ttft: list[float] = []
    total: list[float] = []
    chunks: list[int] = []

    async def call():
        t = now()
        first = None
        count = 0
        async for chunk in stub.GenerateStream(req, metadata=md, timeout=60):
            if first is None:
                first = now() - t
            count += 1
        ttft.append(first)
        total.append(now() - t)
        chunks.append(count)

    elapsed, errors = await run_concurrently(call, n, c)
    return {
        "streams": n,
        "concurrency": c,
        "tokens_per_stream": STREAM_TOKENS,
        "ttft_p50_ms": ms(pct(ttft, 50)),
        "ttft_p99_ms": ms(pct(ttft, 99)),
        "total_p50_ms": ms(pct(total, 50)),
        "total_p99_ms": ms(pct(total, 99)),
        "streams_per_s": round(len(total) / elapsed, 1),
        "tokens_per_s": round(len(total) * STREAM_TOKENS / elapsed, 1),
        # The modality deployment coalesces ready tokens into one chunk, so A and B may send fewer than 32.
        "chunks_per_stream_mean": round(statistics.mean(chunks), 2),
        "errors": len(errors),
        "error_codes": sorted(set(errors)),
    }


async def cancel_attempt(stub, md, log_path: str) -> dict:
    call = stub.GenerateStream(request(LONG_TOKENS), metadata=md, timeout=120)
    first = await call.read()
    request_id = first.request_id
    t_cancel = time.time()
    call.cancel()
    deadline = now() + CANCEL_WAIT_S
    while now() < deadline:
        ev = read_events(log_path).get(request_id, {})
        if "aborted" in ev or "done" in ev:
            break
        await asyncio.sleep(0.02)
    ev = read_events(log_path).get(request_id, {})
    if "aborted" in ev:
        outcome = "aborted"
    elif "done" in ev:
        outcome = "ran_to_completion"
    elif "start" in ev:
        outcome = f"still_running_after_{CANCEL_WAIT_S:g}s"
    else:
        outcome = "engine_never_saw_request"
    end = ev.get("aborted", ev.get("done"))
    out = {
        "request_id": request_id,
        "outcome": outcome,
        "engine_stop_after_cancel_ms": ms(end - t_cancel) if end else None,
    }
    ingress = {k: v for k, v in ev.items() if k.startswith("ingress_")}
    if ingress:  # design A only: the ingress replica saw the cancel (CancelledError / GeneratorExit)
        out["ingress_saw_cancel"] = {k[len("ingress_") :]: ms(v - t_cancel) for k, v in ingress.items()}
    return out


async def measure(target: str, md, log_path: str, sizes: dict, describe=None) -> dict:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        await channel.channel_ready()
        # Serve's proxy learns of a new application shortly after serve.run returns: NOT_FOUND until then.
        deadline = now() + 30
        while True:
            try:
                await stub.Generate(request(1), metadata=md, timeout=10)
                break
            except grpc.aio.AioRpcError as e:
                if e.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE) or now() > deadline:
                    raise
                await asyncio.sleep(0.2)
        for _ in range(20):  # warm-up: connections, handle routers, code paths
            await stub.Generate(request(1), metadata=md, timeout=60)
        for _ in range(5):
            async for _chunk in stub.GenerateStream(request(STREAM_TOKENS), metadata=md, timeout=60):
                pass
        out: dict[str, Any] = {}
        out["unary_sequential"] = await unary_sequential(stub, md, sizes["unary_seq"])
        progress(f"  unary sequential: {out['unary_sequential']}")
        out["unary_c32"] = await unary_concurrent(stub, md, sizes["unary_conc"], 32)
        progress(f"  unary c=32: {out['unary_c32']}")
        out["stream_c1"] = await streams(stub, md, sizes["stream_c1"], 1)
        progress(f"  stream c=1: {out['stream_c1']}")
        out["stream_c16"] = await streams(stub, md, sizes["stream_c16"], 16)
        progress(f"  stream c=16: {out['stream_c16']}")
        attempts = []
        for _ in range(CANCEL_ATTEMPTS):
            attempts.append(await cancel_attempt(stub, md, log_path))
            progress(f"  cancel: {attempts[-1]}")
        if describe is not None:
            info = await describe()
            out["text_in_flight_after_cancel_test"] = info.get("in_flight")
        # Late outcome of attempts that had not stopped within the wait.
        events = read_events(log_path)
        for a in attempts:
            ev = events.get(a["request_id"], {})
            a["final_state_at_end_of_design"] = (
                "aborted" if "aborted" in ev else "done" if "done" in ev else "still_running"
            )
            a["ingress_saw_cancel_by_end"] = sorted(k[len("ingress_") :] for k in ev if k.startswith("ingress_"))
        out["cancel"] = {
            "attempts": attempts,
            "reached_engine": sum(a["outcome"] == "aborted" for a in attempts),
            "of": len(attempts),
        }
        return out

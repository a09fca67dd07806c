"""What one wake costs on this machine, and what that makes one streamed chunk cost the router.

    .venv/bin/python bench/wake_cost.py            # ~2 min; bench/results/wake_cost.{json,png}

No Ray, no vLLM (CPU-light; still run it alone: its numbers are what a quiet box gives).

1. **CPU per wake by how long the thread slept**: `await asyncio.sleep(gap)` on asyncio's and uvloop's loops and a
   plain `time.sleep(gap)`, CPU from `time.process_time()`. On a shared VM the cost of the work after a wake grows
   with the sleep before it (caches and TLBs go cold while other tenants run), so a design that wakes less often
   pays more per wake.
2. **The router's CPU per streamed chunk**: our grpc.aio router and OpenAI surface in this process (servicer,
   interceptor, pipeline, metrics, quotas; no Ray) over an engine whose one-token chunks come `gap` apart, with the
   client in a subprocess. CPU per chunk = (CPU of an n-chunk request - CPU of a 1-chunk request) / (n - 1), at a
   gap of 0 (chunks back to back, as a busy router sees them) and at the engine step and the stream window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # the load clients are subprocesses: no fork-handler notices
BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from bench_common import RESULTS_DIR, cpu_model, progress  # noqa: E402
from router_overhead import InProcessBackend, TrivialEngine, fake_config  # noqa: E402

#: Sleep lengths for part 1 (s) and chunk gaps for part 2 (s): back to back, an engine step here, the stream window.
SLEEPS_S = (0.0, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05)
GAPS_S = (0.0, 0.0025, 0.02)
CHUNKS = 16


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sleeps_in(gap_s: float, budget_s: float = 2.0) -> int:
    """How many sleeps of `gap_s` to time: about `budget_s` of sleeping, at least 50 (20,000 for gap 0)."""
    return 20_000 if gap_s == 0 else max(50, int(budget_s / gap_s))


def sleep_cost_us(kind: str, gap_s: float) -> float:
    """CPU µs per sleep of `gap_s` in a loop of `kind` (asyncio, uvloop) or a thread (`time.sleep`)."""
    n = sleeps_in(gap_s)
    if kind == "time.sleep":
        began = time.process_time()
        for _ in range(n):
            time.sleep(gap_s)
        return 1e6 * (time.process_time() - began) / n

    async def sleeps() -> float:
        began = time.process_time()
        for _ in range(n):
            await asyncio.sleep(gap_s)
        return 1e6 * (time.process_time() - began) / n

    if kind == "uvloop":
        import uvloop

        return uvloop.run(sleeps())
    return asyncio.run(sleeps())


def per_chunk_us(one_ms: float, many_ms: float, chunks: int) -> float:
    """CPU µs per chunk beyond the first, from the CPU per request of 1-chunk and `chunks`-chunk requests."""
    return 1e3 * (many_ms - one_ms) / (chunks - 1)


async def _client(surface: str, port: int, tokens: int, requests: int) -> None:
    """The load (in the subprocess): warm up, say READY, wait for a line, run `requests` at concurrency 1."""
    from loadgen import GrpcTarget, OpenAIChatTarget, SamplingSpec, make_prompts, run_closed

    target = (GrpcTarget(f"127.0.0.1:{port}", "fake") if surface == "grpc"
              else OpenAIChatTarget(f"http://127.0.0.1:{port}", "fake"))
    sampling = SamplingSpec(max_tokens=tokens)
    await target.open()
    await run_closed(target, make_prompts(8), sampling, concurrency=1, requests=8)
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    records = await run_closed(target, make_prompts(64), sampling, concurrency=1, requests=requests)
    failed = [r for r in records if r.error is not None or r.output_tokens != tokens]
    print(f"DONE {len(failed)}", flush=True)
    await target.close()


async def _cpu_per_request_ms(surface: str, port: int, tokens: int, requests: int) -> float:
    """The router's (this process's) CPU per request while a client subprocess streams `requests` requests."""
    client = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", surface, str(port), str(tokens), str(requests),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    if not (await client.stdout.readline()).startswith(b"READY"):
        raise RuntimeError(f"{surface}: the load client did not start")
    began = process_cpu()
    client.stdin.write(b"go\n")
    await client.stdin.drain()
    done = (await client.stdout.readline()).split()
    spent = process_cpu() - began
    await client.wait()
    if done[:1] != [b"DONE"] or done[1] != b"0":
        raise RuntimeError(f"{surface}: requests failed ({done})")
    return 1e3 * spent / requests


async def router_costs(requests: int) -> list[dict]:
    from gemma_serving.router.server import start_grpc_server, start_openai_server

    engine = TrivialEngine()  # its one-token chunks come engine.gap_s apart
    config = fake_config()
    router = await start_grpc_server(config, InProcessBackend(engine))
    http, http_port = (await start_openai_server(config, router))[:2]
    rows = []
    try:
        for gap in GAPS_S:
            engine.gap_s = gap
            for surface, port in (("grpc", router.port), ("openai", http_port)):
                one = await _cpu_per_request_ms(surface, port, 1, requests)
                many = await _cpu_per_request_ms(surface, port, CHUNKS, max(requests // 2, 20))
                row = {"surface": surface, "gap_ms": gap * 1e3, "cpu_ms_per_request_1_chunk": round(one, 3),
                       f"cpu_ms_per_request_{CHUNKS}_chunks": round(many, 3),
                       "cpu_us_per_chunk": round(per_chunk_us(one, many, CHUNKS), 1)}
                progress(f"router {surface} gap {gap * 1e3:g} ms: {row['cpu_us_per_chunk']} µs per chunk")
                rows.append(row)
    finally:
        http.should_exit = True
        await router.server.stop(0)
    return rows


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for kind in sorted({r["kind"] for r in results["sleep"]}):
        rows = [r for r in results["sleep"] if r["kind"] == kind]
        left.plot([r["gap_ms"] for r in rows], [r["cpu_us_per_wake"] for r in rows], marker="o", label=kind)
    left.set(xlabel="sleep before the wake (ms)", ylabel="CPU µs per wake", title="CPU per wake by sleep length")
    left.legend()
    for surface in ("grpc", "openai"):
        rows = [r for r in results["router"] if r["surface"] == surface]
        right.plot([r["gap_ms"] for r in rows], [r["cpu_us_per_chunk"] for r in rows], marker="o", label=surface)
    right.set(xlabel="gap between chunks (ms)", ylabel="router CPU µs per chunk",
              title="router CPU per streamed chunk (in-process, no Ray)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=200, help="requests per router measurement (1-chunk)")
    p.add_argument("--out", default=str(RESULTS_DIR / "wake_cost.json"))
    p.add_argument("--client", nargs=4, metavar=("SURFACE", "PORT", "TOKENS", "REQUESTS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        surface, port, tokens, requests = args.client
        asyncio.run(_client(surface, int(port), int(tokens), int(requests)))
        return
    load = os.getloadavg()
    sleep_rows = []
    for kind in ("asyncio", "uvloop", "time.sleep"):
        for gap in SLEEPS_S:
            sleep_rows.append({"kind": kind, "gap_ms": gap * 1e3, "cpu_us_per_wake": round(sleep_cost_us(kind, gap), 1)})
            progress(f"{kind} sleep {gap * 1e3:g} ms: {sleep_rows[-1]['cpu_us_per_wake']} µs CPU")
    import uvloop

    router_rows = uvloop.run(router_costs(args.requests))
    results = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "loadavg_at_start": load,
                           "loadavg_at_end": os.getloadavg()},
               "sleep": sleep_rows, "router": router_rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    progress(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

"""Where the serving layer's CPU goes: py-spy samples of the router and text replica under a gRPC streaming load.

    .venv/bin/python bench/token_path_profile.py --concurrency 16 --seconds 15

Prints the functions with the most samples (self and inclusive) per process; raw stacks stay in /tmp.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
import psutil  # noqa: E402
from bench_common import exit_stopping_ray, progress  # noqa: E402
from loadgen import GrpcTarget, OpenAIChatTarget, SamplingSpec, make_prompts, run_closed  # noqa: E402
from procstats import cpu_seconds  # noqa: E402
from token_path import model_config, start_platform  # noqa: E402


def replica_pid(deployment: str) -> int:
    for p in psutil.process_iter(["pid", "cmdline"]):
        if f"ServeReplica:tokenpath:{deployment}" in " ".join(p.info["cmdline"] or []):
            return p.pid
    raise RuntimeError(f"no {deployment} replica")


def top(path: Path, n: int = 25) -> None:
    self_counts, incl = collections.Counter(), collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        c = int(count)
        total += c
        self_counts[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    print(f"--- {path.name}: {total} samples; self")
    for f, c in self_counts.most_common(n):
        print(f"{100 * c / total:5.1f}%  {f[:150]}")
    print("--- inclusive")
    for f, c in incl.most_common(n + 15):
        print(f"{100 * c / total:5.1f}%  {f[:150]}")


async def cpu_per_request(target, sampling: SamplingSpec, concurrency: int, pids: dict[str, int]) -> None:
    """CPU per request and per output token of each process from /proc, before py-spy attaches."""
    procs = {d: psutil.Process(pid) for d, pid in pids.items()}
    await target.open()
    await run_closed(target, make_prompts(16), sampling, concurrency=concurrency, requests=16)  # warm
    before = {d: cpu_seconds(p) for d, p in procs.items()}
    t0 = time.monotonic()
    records = await run_closed(target, make_prompts(64), sampling, concurrency=concurrency, requests=200)
    wall = time.monotonic() - t0
    tokens = sum(r.output_tokens for r in records)
    for d, p in procs.items():
        cpu = cpu_seconds(p) - before[d]
        print(f"{d}: {1e3 * cpu / len(records):.2f} ms CPU/request, {1e3 * cpu / max(tokens, 1):.3f} ms/token, "
              f"{1e3 * cpu / wall:.1f} ms/s over {wall:.1f} s; {len(records)} requests, {tokens} tokens")
    await target.close()


def idle_floor(pids: dict[str, int], seconds: int, native: bool) -> None:
    """Each process's CPU with no request in flight (after a settling pause), then py-spy samples of it."""
    procs = {d: psutil.Process(pid) for d, pid in pids.items()}
    time.sleep(10)
    before = {d: cpu_seconds(p) for d, p in procs.items()}
    time.sleep(seconds)
    for d, p in procs.items():
        print(f"{d}: idle floor {1e3 * (cpu_seconds(p) - before[d]) / seconds:.1f} ms/s over {seconds} s")
    for d, spy in record(pids, seconds, native).items():
        spy.wait(seconds + 60)
        top(Path(f"/tmp/pyspy_{d}.txt"))


def record(pids: dict[str, int], seconds: int, native: bool) -> dict[str, subprocess.Popen]:
    """py-spy recording each process for `seconds` (raw stacks in /tmp/pyspy_<name>.txt)."""
    return {d: subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
                                 "--duration", str(seconds), "--rate", "200", "--format", "raw",
                                 *(["--native"] if native else ["--nonblocking"]), "-o", f"/tmp/pyspy_{d}.txt"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for d, pid in pids.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--stream-flush-ms", type=float, default=None)
    p.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (2: per-request cost)")
    p.add_argument("--native", action="store_true", help="py-spy --native: C frames too (grpc, uvloop, zmq)")
    p.add_argument("--surface", choices=("grpc", "openai"), default="grpc")
    p.add_argument("--idle", action="store_true", help="no load: each process's CPU floor (ms/s) and its samples")
    args = p.parse_args()
    cfg = model_config(64)
    grpc_port, http_port = start_platform(cfg, args.stream_flush_ms)
    pids = {d: replica_pid(d) for d in ("router", "text")}
    progress(f"platform up; pids {pids}")
    target = (GrpcTarget(f"127.0.0.1:{grpc_port}", cfg["name"]) if args.surface == "grpc"
              else OpenAIChatTarget(f"http://127.0.0.1:{http_port}/v1", cfg["name"]))
    sampling = SamplingSpec(max_tokens=args.max_tokens, ignore_eos=True)
    if args.idle:
        idle_floor(pids, args.seconds, args.native)
        exit_stopping_ray()
    asyncio.run(cpu_per_request(target, sampling, args.concurrency, pids))
    spies = record(pids, args.seconds, args.native)

    async def load():
        await target.open()
        end = time.monotonic() + args.seconds + 2
        while time.monotonic() < end:
            await run_closed(target, make_prompts(64), sampling, concurrency=args.concurrency,
                             requests=args.concurrency * 2)
        await target.close()

    asyncio.run(load())
    for d, spy in spies.items():
        spy.wait(60)
        top(Path(f"/tmp/pyspy_{d}.txt"))
    exit_stopping_ray()


if __name__ == "__main__":
    main()

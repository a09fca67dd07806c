"""Where the serving layer's CPU goes, per thread: the router and text replica idle, then under streaming load.

    .venv/bin/python bench/token_path_threads.py --concurrency 1 --surfaces grpc,openai
    .venv/bin/python bench/token_path_threads.py --concurrency 32 --output-len 2     # the per-request part

CPU per thread from /proc/<pid>/task/<tid>/stat (exact, unlike sampling), each thread named by Python's thread name
from `py-spy dump` (Ray names every Python thread of a worker "ray::IDLE" at the OS level): the replica's user-code
event loop, Serve's own loop, Ray's main thread, ZeroMQ's and gRPC's I/O threads. Prints ms of CPU per second idle
and per output token under load. `--system` also prints Ray's own processes (GCS, raylet, dashboard and its agent,
Serve's controller and proxy, ...) per process, in ms per second idle and under load: they share the box's cores
with the engine but are outside "serving CPU".
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from bench_common import exit_stopping_ray, progress  # noqa: E402
from loadgen import GrpcTarget, OpenAIChatTarget, SamplingSpec, make_prompts, run_closed  # noqa: E402
from procstats import cpu_seconds  # noqa: E402
from token_path import model_config, start_platform  # noqa: E402
from token_path_profile import replica_pid  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")
_THREAD_LINE = re.compile(r'Thread (\d+) \(\w+\): "([^"]*)"')


def thread_names(dump: str) -> dict[int, str]:
    """Native thread id -> Python thread name, from `py-spy dump` output."""
    return {int(tid): name for tid, name in _THREAD_LINE.findall(dump)}


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Thread id -> (OS thread name, user + system CPU seconds) for every thread of `pid`."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:  # the thread ended
            continue
        out[int(tid)] = parse_stat(stat)
    return out


def parse_stat(stat: str) -> tuple[str, float]:
    """(comm, utime + stime in seconds) of one /proc stat line (comm may hold spaces and parentheses)."""
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    return comm, (int(fields[11]) + int(fields[12])) / _TICK


def by_thread(before: dict, after: dict, names: dict[int, str]) -> collections.Counter:
    """CPU seconds spent between two thread_cpu snapshots, per thread name (Python's where known)."""
    spent = collections.Counter()
    for tid, (comm, cpu) in after.items():
        spent[names.get(tid, comm)] += cpu - before.get(tid, (comm, 0.0))[1]
    return spent


def process_label(cmdline: list[str]) -> str:
    """A short stable name for one of Ray's processes: its Ray title (`ray::ServeController`), else the script or
    program it runs (`gcs_server`, `raylet`, `dashboard.py`, `agent.py`, ...)."""
    if not cmdline:
        return "?"
    if cmdline[0].startswith("ray::"):
        return cmdline[0].split()[0]
    scripts = [a for a in cmdline[1:] if a.endswith(".py")]
    return Path(scripts[0] if scripts and Path(cmdline[0]).name.startswith("python") else cmdline[0]).name


def system_cpu(exclude: set[int]) -> collections.Counter:
    """CPU seconds so far of every process below this one except `exclude` and their children, by process_label."""
    import psutil

    spent = collections.Counter()
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.pid in exclude or any(parent.pid in exclude for parent in proc.parents()):
                continue
            spent[process_label(proc.cmdline())] += cpu_seconds(proc)
        except psutil.Error:  # ended meanwhile
            continue
    return spent


def line(label: str, spent: collections.Counter, per: float, unit: str) -> str:
    top = ", ".join(f"{name}={1000 * s / per:.2f}" for name, s in spent.most_common(8) if s > 0)
    return f"{label}: {1000 * sum(spent.values()) / per:.3f} ms/{unit} ({top})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--surfaces", default="grpc,openai")
    p.add_argument("--idle-s", type=float, default=20)
    p.add_argument("--stream-flush-ms", type=float, default=None)
    p.add_argument("--system", action="store_true", help="also Ray's own processes, per process")
    args = p.parse_args()
    cfg = model_config(args.output_len)
    grpc_port, http_port = start_platform(cfg, args.stream_flush_ms)
    pids = {d: replica_pid(d) for d in ("router", "text")}
    py_spy = str(Path(sys.executable).parent / "py-spy")
    names = {d: thread_names(subprocess.run([py_spy, "dump", "--pid", str(pid)], capture_output=True,
                                            text=True).stdout) for d, pid in pids.items()}
    progress(f"platform up; pids {pids}; idle for {args.idle_s:g} s")
    time.sleep(5)
    serving = set(pids.values())
    before = {d: thread_cpu(pid) for d, pid in pids.items()}
    system_before = system_cpu(serving)
    time.sleep(args.idle_s)
    for d, pid in pids.items():
        print(line(f"idle {d}", by_thread(before[d], thread_cpu(pid), names[d]), args.idle_s, "s"), flush=True)
    if args.system:
        print(line("idle ray system", system_cpu(serving) - system_before, args.idle_s, "s"), flush=True)
    sampling = SamplingSpec(max_tokens=args.output_len, ignore_eos=True)
    requests = max(48, 6 * args.concurrency)
    for surface in args.surfaces.split(","):
        target = (GrpcTarget(f"127.0.0.1:{grpc_port}", cfg["name"]) if surface == "grpc"
                  else OpenAIChatTarget(f"http://127.0.0.1:{http_port}", cfg["name"]))

        async def load():
            await target.open()
            try:
                await run_closed(target, make_prompts(64), sampling, concurrency=args.concurrency,
                                 requests=args.concurrency)  # warm-up
                start = {d: thread_cpu(pid) for d, pid in pids.items()}
                system_start = system_cpu(serving)
                began = time.monotonic()
                await run_closed(target, make_prompts(64), sampling, concurrency=args.concurrency, requests=requests)
                return start, system_start, time.monotonic() - began
            finally:
                await target.close()

        start, system_start, wall = asyncio.run(load())
        tokens = requests * args.output_len
        for d, pid in pids.items():
            label = f"{surface} c={args.concurrency} {tokens / wall:.0f} tok/s {d}"
            print(line(label, by_thread(start[d], thread_cpu(pid), names[d]), tokens, "token"), flush=True)
        if args.system:
            print(line(f"{surface} c={args.concurrency} ray system", system_cpu(serving) - system_start, wall, "s"),
                  flush=True)
    exit_stopping_ray()


if __name__ == "__main__":
    main()

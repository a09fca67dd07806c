"""The idle CPU floor of a bare Ray Serve deployment pair (an ingress holding a handle to a leaf), by the
`RAY_SERVE_METRICS_EXPORT_INTERVAL_MS` each Ray instance runs with, in alternating runs.

    .venv/bin/python bench/serve_floor.py --rounds 3 --intervals default,1000

Each run is a subprocess that starts its own Ray (the variable must be in the raylet's environment, which workers
inherit), deploys the pair, lets it settle and reads both replicas' CPU over `--seconds` from /proc. Results:
bench/results/serve_floor.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results" / "serve_floor.json"


def measure(seconds: int) -> dict[str, float]:
    """One run in this process: both replicas' CPU ms per second with nothing to do."""
    sys.path.insert(0, str(BENCH_DIR))
    import psutil
    from procstats import cpu_seconds
    from ray import serve
    from router_overhead import start_ray

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1})
    class Leaf:
        async def __call__(self) -> int:
            return 1

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1})
    class Ingress:
        def __init__(self, leaf) -> None:
            self.leaf = leaf

        async def __call__(self) -> int:
            return await self.leaf.remote()

    start_ray(worker_niceness=0)
    serve.run(Ingress.bind(Leaf.bind()), name="floor", route_prefix=None).remote().result()
    procs = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        for name in ("Ingress", "Leaf"):
            if f"ServeReplica:floor:{name}" in " ".join(p.info["cmdline"] or []):
                procs[name] = psutil.Process(p.info["pid"])
    time.sleep(10)  # past start-up work
    before = {n: cpu_seconds(p) for n, p in procs.items()}
    time.sleep(seconds)
    floor = {n: round(1e3 * (cpu_seconds(p) - before[n]) / seconds, 2) for n, p in procs.items()}
    serve.shutdown()
    return floor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--intervals", default="default,1000", help="values of the variable; 'default': unset")
    p.add_argument("--seconds", type=int, default=30)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a single run (the subprocess)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.seconds)))
        return
    runs = []
    for r in range(args.rounds):
        for interval in args.intervals.split(","):
            env = {k: v for k, v in os.environ.items() if k != "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS"}
            if interval != "default":
                env["RAY_SERVE_METRICS_EXPORT_INTERVAL_MS"] = interval
            out = subprocess.run([sys.executable, __file__, "--one", "--seconds", str(args.seconds)], env=env,
                                 capture_output=True, text=True, timeout=args.seconds + 240, check=True)
            floor = json.loads(out.stdout.strip().splitlines()[-1])
            runs.append({"round": r, "interval_ms": interval, "loadavg": os.getloadavg()[0], **floor})
            print(f"round {r} interval {interval}: ingress {floor['Ingress']} ms/s, leaf {floor['Leaf']} ms/s",
                  flush=True)
    medians = {i: {n: statistics.median(x[n] for x in runs if x["interval_ms"] == i) for n in ("Ingress", "Leaf")}
               for i in args.intervals.split(",")}
    RESULTS.write_text(json.dumps({"benchmark": "serve_floor", "started_unix": round(time.time()),
                                   "cpu_count": os.cpu_count(), "seconds": args.seconds, "runs": runs,
                                   "median_ms_per_s": medians}, indent=1))
    print(json.dumps(medians))


if __name__ == "__main__":
    main()

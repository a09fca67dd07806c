"""Serving benchmark: the platform end to end vs the same engine in-process vs the naive per-request service.

One command, one session, the same tiny model, the same prompts and the same sampling (greedy, seed 0, max_tokens 64):

    .venv/bin/python bench/serving.py            # default: ladder 1/8/32/64 + Poisson 2 and 8 req/s, 2 rounds, ~10 min
    .venv/bin/python bench/serving.py --quick    # ladder 1/32 + Poisson 8 req/s, 1 round, ~3 min
    .venv/bin/python bench/serving.py --profile gpu   # on a lent accelerator (see README "Performance")

Targets (all three are up at once; each load step runs on one target at a time, targets interleaved step by step
with the order rotated, so that drifting background load on a shared machine hits all of them alike):

* platform: client -> gRPC -> router (grpc.aio inside a Ray Serve replica) -> deployment handle -> text
  `ModalityDeployment` -> `VllmEngine` -> vLLM `AsyncLLM` (engine core process). Built with
  `gemma_serving.app.build_app` from the local config's text service (only text is deployed).
* engine: the same `VllmEngine` (same `ModelConfig`, same `AsyncLLM` settings) called in-process by the load
  generator in a subprocess: no gRPC, no Ray, no router.
* naive: bench/naive_service.py, the tutorial's "ProductionGemmaService": transformers `model.generate` per request
  under a lock, behind the same gRPC API (one chunk per answer, so its TTFT is its end-to-end latency).

Fairness: every target decodes greedily from the same prompts with max_tokens 64. The API has no `ignore_eos`, so
outputs may end early at an end-of-turn token; throughput counts the tokens actually generated (from usage, or the
engine's own counts), and the tables show the mean output tokens per request of every target.

Also measured per step: CPU seconds of every process group (router replica, text replica, its engine processes,
Ray's own processes, the load generator, and "other" = processes this run did not start), from psutil.

After the comparison it runs bench/router_overhead.py's measurements on the same Ray instance (a trivial engine
behind the router vs called directly), unless --skip-router-overhead. Results: bench/results/serving.{json,png} and
bench/results/router_overhead.{json,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS_DIR
from serving_measure import SIZES
from serving_output import plot, print_table
from serving_run import run
from serving_targets import ALL_TARGETS, DEFAULT_TARGETS, PROFILES, engine_worker_main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="ladder 1/32, one Poisson rate, one round (~3 min)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--engine", choices=["vllm", "transformers"], help="override the profile's engine")
    p.add_argument("--model-source", help="model source for every target (default: the local text model)")
    p.add_argument("--concurrency", help="override the ladder, e.g. 1,8,32,64")
    p.add_argument("--rates", help="override the Poisson rates (req/s), e.g. 2,8 ('' = none)")
    p.add_argument("--rounds", type=int, help="override the number of rounds")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--targets", help=f"subset of {','.join(ALL_TARGETS)} (default: {DEFAULT_TARGETS['full']}; "
                   f"--quick: {DEFAULT_TARGETS['quick']})")
    p.add_argument("--ray-worker-niceness", default="0",
                   help="nice value of Ray's worker processes (Ray's default is 15; 'ray' keeps it). The baselines "
                   "run at this process's niceness, so 0 keeps the comparison fair on a shared machine")
    p.add_argument("--stream-interval", type=int, default=8,
                   help="platform-si: vLLM stream_interval (engine.extra_args) of that platform's text service")
    p.add_argument("--pace-window-ms", type=float, default=50.0, help="platform-paced: at most one chunk per window")
    p.add_argument("--goal-concurrency", type=int, default=32)
    p.add_argument("--skip-router-overhead", action="store_true")
    p.add_argument("--out", default=str(RESULTS_DIR / "serving.json"))
    p.add_argument("--replot", action="store_true", help="only redraw the PNG and print the tables from --out")
    p.add_argument("--engine-worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.replot:
        results = json.loads(Path(args.out).read_text())
        plot(results, Path(args.out).with_suffix(".png"))
        print_table(results)
        return

    if args.engine_worker:
        asyncio.run(engine_worker_main(json.loads(args.engine_worker)))
        return

    profile = dict(PROFILES[args.profile])
    if args.engine:
        profile["engine"] = args.engine
    sizes = json.loads(json.dumps(SIZES["quick" if args.quick else "full"]))
    if args.concurrency:
        sizes["concurrency"] = [int(x) for x in args.concurrency.split(",") if x]
    if args.rates is not None:
        sizes["rates"] = [float(x) for x in args.rates.split(",") if x]
    if args.rounds:
        sizes["rounds"] = args.rounds
    sizes["requests"] = {int(k): v for k, v in sizes["requests"].items()}
    sizes["naive_requests"] = {int(k): v for k, v in sizes["naive_requests"].items()}
    sizes["max_tokens"] = args.max_tokens
    wanted = [t for t in (args.targets or DEFAULT_TARGETS["quick" if args.quick else "full"]).split(",") if t]
    if not args.targets and profile["engine"] != "vllm":
        wanted = [t for t in wanted if t != "platform-si"]  # stream_interval is a vLLM setting
    unknown = set(wanted) - set(ALL_TARGETS)
    if unknown:
        p.error(f"unknown targets {sorted(unknown)}")
    niceness = None if args.ray_worker_niceness == "ray" else int(args.ray_worker_niceness)
    # Read by paced_engine inside the platform-paced replicas (they inherit this environment through Ray).
    os.environ["BENCH_PACE_WINDOW_S"] = str(args.pace_window_ms / 1000)

    run(args, profile, sizes, wanted, niceness)


if __name__ == "__main__":
    main()

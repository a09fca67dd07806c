"""Router design benchmark: Ray Serve's native gRPC proxy vs our grpc.aio server inside a replica, in one run.

Run from the repository root (about 3 minutes on a 2-core machine, no GPU; loopback only):

    .venv/bin/python bench/router_design.py            # writes bench/results/router_design.{json,png}
    .venv/bin/python bench/router_design.py --quick --rounds 1 --out /tmp/rd/router_design.json   # ~30 s smoke

Designs, all in front of the same FakeEngine (step_delay_s=0, one token per engine step):

* A "serve-grpc-proxy": `serve.start(grpc_options=gRPCOptions(...))`; client -> Serve gRPC proxy actor -> ingress
  deployment (Generate / GenerateStream, same pb<->domain conversion and validation as our servicer) -> streaming
  handle -> `ModalityDeployment` "text" (the production deployment class, FakeEngine factory). Clients send the
  ("application", <app>) metadata.
* B "grpc-aio-in-replica" (ours): `gemma_serving.app.build_app(...)`: client -> grpc.aio server inside the
  `RouterDeployment` replica -> streaming handle -> the same `ModalityDeployment` "text".
* C "in-process baseline": `gemma_serving.router.server.start_grpc_server` over a backend that calls
  FakeEngine.generate directly, in a separate plain Python process (no Ray, no coalescing).

Measured per design: sequential unary latency (max_tokens=1, so it is pure routing overhead), unary throughput at
concurrency 32, 32-token streams (time to first chunk and total time) at concurrency 1 and 16, and whether a client
cancel after the first chunk of a 10,000-token stream reaches the engine (the engine logs start/aborted/done events
of long requests to a file, keyed by the request id that the first chunk carries back).

One Ray instance (`ray.init(address="local", num_cpus=2, include_dashboard=False)`), one `serve.start`; A and B run
one after the other as separate Serve applications (deleted in between), in `--rounds` rounds (default 2, A/B order
alternating; C last in each round); reported metrics are per-design medians over rounds, per-round values are kept.
Numbers from a shared 2-core box are noisy (the JSON records the load average); compare designs within one run.

Pitfalls this script works around (see the comments at each): Serve's gRPC proxy answers NOT_FOUND for an app run
with route_prefix=None; the generated pb classes are named 'gemma.serving.v1.inference_pb2' and do not pickle, which
Serve's proxy needs (a PYTHONPATH shim aliases that module name for the run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Serve's proxies bind with SO_REUSEPORT by default: another cluster on this box could silently share our port.
os.environ.setdefault("SERVE_SOCKET_REUSE_PORT_ENABLED", "0")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grpc
from bench_common import BENCH_DIR, RESULTS_DIR, STARTED, free_port, now, progress, share_on_path
from gemma_serving.config import parse_config
from router_design_client import measure
from router_design_results import flat_metrics, plot, print_table, summarize
from router_design_servers import (
    CANCEL_STEP_DELAY_S,
    CANCEL_WAIT_S,
    CONFIG,
    LONG_TOKENS,
    STREAM_TOKENS,
    build_design_a,
    c_server_main,
    install_pb_pickle_shim,
    make_engine_factory,
    start_design_c,
)

# Ray workers (Serve replicas) import this benchmark's engine and ingress classes by module name: bench/ on their path.
share_on_path(BENCH_DIR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (smoke test)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of A, B, C (metrics are medians)")
    parser.add_argument("--out", default=str(RESULTS_DIR / "router_design.json"))
    parser.add_argument("--c-server", metavar="LOG_PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.c_server:
        asyncio.run(c_server_main(args.c_server))
        return

    sizes = (
        {"unary_seq": 50, "unary_conc": 200, "stream_c1": 10, "stream_c16": 48}
        if args.quick
        else {"unary_seq": 300, "unary_conc": 1000, "stream_c1": 50, "stream_c16": 160}
    )
    import ray
    from gemma_serving.app import build_app
    from ray import serve
    from ray.serve.config import gRPCOptions

    workdir = Path(tempfile.mkdtemp(prefix="router_design_"))
    config = parse_config(CONFIG)
    machine = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    results: dict[str, Any] = {
        "benchmark": "router_design",
        "started_unix": round(time.time()),
        "machine": machine,
        "rounds": args.rounds,
        "sizes": {
            **sizes,
            "stream_tokens": STREAM_TOKENS,
            "unary_max_tokens": 1,
            "cancel_stream_tokens": LONG_TOKENS,
            "cancel_engine_step_s": CANCEL_STEP_DELAY_S,
            "cancel_wait_s": CANCEL_WAIT_S,
        },
        "designs": {},
    }

    progress(f"machine: {machine}")
    # Generated pb classes carry __module__ 'gemma.serving.v1.inference_pb2' (protoc's name, which
    # scripts/gen_protos.py does not rewrite): they cannot be pickled, and Serve's gRPC proxy pickles the request
    # to the ingress replica. Make that module name importable in every Ray worker via a shim on PYTHONPATH.
    install_pb_pickle_shim(workdir)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    grpc_port, http_port = free_port(), free_port()
    serve.start(
        http_options={"host": "127.0.0.1", "port": http_port},
        grpc_options=gRPCOptions(
            port=grpc_port,
            grpc_servicer_functions=["gemma_serving.api.inference_pb2_grpc.add_InferenceServicer_to_server"],
        ),
    )
    progress(f"ray + serve started (serve gRPC proxy on {grpc_port})")

    names = {"A": "serve-grpc-proxy", "B": "grpc-aio-in-replica", "C": "in-process (no Ray)"}
    rounds: dict[str, list[dict]] = {k: [] for k in names}

    def run_a(r: int) -> dict:
        # Serve gRPC proxy -> ingress deployment -> text deployment.
        log = str(workdir / f"a{r}.log")
        t = now()
        # route_prefix must be set: an app run with route_prefix=None is not reachable through Serve's proxies,
        # gRPC included (NOT_FOUND "Application ... not found").
        serve.run(build_design_a(config, make_engine_factory(log), log), name="design_a", route_prefix="/design_a")
        progress(f"A (round {r}): serve-grpc-proxy app up in {now() - t:.1f}s; measuring")
        text = serve.get_deployment_handle("text", app_name="design_a")
        try:
            return asyncio.run(
                measure(
                    f"127.0.0.1:{grpc_port}",
                    (("application", "design_a"),),
                    log,
                    sizes,
                    describe=lambda: text.describe.remote(),
                )
            )
        finally:
            serve.delete("design_a")

    def run_b(r: int) -> dict:
        # Ours: grpc.aio server inside the router replica -> text deployment.
        log = str(workdir / f"b{r}.log")
        t = now()
        handle = serve.run(
            build_app(config, engine_factory=make_engine_factory(log), checkpoint_resolver=Path),
            name=config.app_name,
            route_prefix=None,
        )
        port = handle.port.remote().result()
        progress(f"B (round {r}): grpc-aio-in-replica app up in {now() - t:.1f}s (router port {port}); measuring")
        text = serve.get_deployment_handle("text", app_name=config.app_name)
        try:
            return asyncio.run(
                measure(
                    f"127.0.0.1:{port}",
                    (("application", config.app_name),),
                    log,
                    sizes,
                    describe=lambda: text.describe.remote(),
                )
            )
        finally:
            serve.delete(config.app_name)

    def run_c(r: int) -> dict:
        # Plain grpc.aio server, engine in-process, no Ray on the path (Ray stays up, idle).
        log = str(workdir / f"c{r}.log")
        proc, port = start_design_c(log)
        progress(f"C (round {r}): in-process baseline up (port {port}); measuring")
        try:
            return asyncio.run(measure(f"127.0.0.1:{port}", (), log, sizes))
        finally:
            proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    runners = {"A": run_a, "B": run_b, "C": run_c}
    try:
        for r in range(args.rounds):
            # Alternate the order of A and B so that drift in background load does not favour one of them.
            for k in ("A", "B", "C") if r % 2 == 0 else ("B", "A", "C"):
                res = runners[k](r)
                res["metrics"] = flat_metrics(res)
                rounds[k].append(res)
    finally:
        serve.shutdown()
        ray.shutdown()


    summarize(results, names, rounds)
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["wall_s"] = round(now() - STARTED, 1)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    progress(f"wrote {out} and {out.with_suffix('.png')}")
    print_table(results)


if __name__ == "__main__":
    main()

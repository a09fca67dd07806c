"""Router overhead micro-benchmark: a trivial engine behind the router vs called directly, in one run.

    .venv/bin/python bench/router_overhead.py            # ~2 min; writes bench/results/router_overhead.{json,png}
    .venv/bin/python bench/router_overhead.py --quick    # ~1 min

(bench/serving.py runs it too, at its end, on its Ray instance.)

The engine is `TrivialEngine` (what `FakeEngine(step_delay_s=0)` used to be: one " word<i>" chunk per event-loop
turn, nothing else), so everything measured is serving overhead. Paths, each measured at concurrency 1 and 32 with 1-token requests (pure routing) and
64-token streams:

* direct:   TrivialEngine.generate() called in the load generator's process (the baseline);
* handle:   a Ray Serve streaming deployment handle from the driver -> text `ModalityDeployment` (TrivialEngine):
            the Ray hop and the deployment's coalescing, without the router;
* router:   gRPC -> our grpc.aio router (`start_grpc_server`: servicer, validation, pipeline) with TrivialEngine
            called in the router's own process, no Ray (a subprocess);
* platform: gRPC -> router replica -> handle -> text replica (TrivialEngine): `build_app` with an engine factory.
* platform-tp (--with-tp): the same app with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 in both replicas' environment (Serve 2.60:
            user code and handle routing on the replica's main event loop, gRPC between handle and replica): a
            candidate setting, measured side by side (bench/serving.py measures it with vLLM too).

"Added" = path minus direct, at p50 and p99, for time to first chunk and end-to-end latency. Steps are interleaved
(path order rotated per step) so that background load drifts evenly; `--rounds` medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform as pyplatform
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "services"))
sys.path.insert(0, str(BENCH_DIR))
os.environ["PYTHONPATH"] = os.pathsep.join(
    dict.fromkeys(filter(None, [str(BENCH_DIR), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]))
)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from loadgen import EngineTarget, GrpcTarget, SamplingSpec, make_prompts, run_closed, summarize

RESULTS_DIR = BENCH_DIR / "results"
APP_NAME = "bench-fake"
MODEL = "fake"
PATHS = ("direct", "handle", "router", "platform", "platform-tp")
#: Ray Serve 2.60's throughput-optimized mode, applied per replica (see with_env).
SERVE_TP_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
SIZES = {
    # (concurrency, max_tokens) -> requests
    "full": {(1, 1): 300, (32, 1): 960, (1, 64): 100, (32, 64): 192},
    "quick": {(1, 1): 100, (32, 1): 320, (1, 64): 30, (32, 64): 96},
}


class TrivialEngine:
    """The trivial backend: yields `max_tokens` chunks " word<i>", one per event-loop turn (asyncio.sleep(0)), or
    `gap_s` apart when that is set (bench/wake_cost.py).

    What gemma_serving's FakeEngine(step_delay_s=0) used to do. FakeEngine now builds a list of 10**6 token strings
    on every request when it has no script (~0.1 s of CPU per request) and keeps every request in `seen`, which
    makes it unusable as a zero-cost engine here.
    """

    def __init__(self) -> None:
        self.in_flight: set[str] = set()
        self.start_seconds = 0.0
        self.gap_s = 0.0

    async def start(self) -> None:
        pass

    async def generate(self, request, *, request_id: str) -> AsyncIterator:
        from gemma_serving.engines.types import Chunk, FinishReason

        prompt_tokens = sum(len(getattr(p, "text", "x").split()) for m in request.messages for p in m.parts)
        n = request.sampling.max_tokens or 16
        self.in_flight.add(request_id)
        try:
            for i in range(n):
                await asyncio.sleep(self.gap_s)
                yield Chunk(f" word{i}", prompt_tokens, i + 1, FinishReason.LENGTH if i + 1 == n else None)
        finally:
            self.in_flight.discard(request_id)

    async def abort(self, request_id: str) -> None:
        pass

    async def check_health(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass


def fake_engine_factory(kind, model, path):
    """Engine factory for build_app (pickled by reference: bench/ is on the replicas' PYTHONPATH)."""
    return TrivialEngine()


def with_env(app, env: dict[str, str]):
    """`app` (from build_app) with `env` added to every deployment's runtime_env env_vars, bound args kept.

    Uses Serve's Application/Deployment internals (`_bound_deployment`, `_replica_config`): the platform has no hook
    for router replica env vars yet (services/gemma_serving/app.py sets only the services' `deployment.env`).
    """
    from ray.serve.deployment import Application

    def rewrap(x):
        if isinstance(x, Application):
            return with_env(x, env)
        if isinstance(x, dict):
            return {k: rewrap(v) for k, v in x.items()}
        return x

    d = app._bound_deployment
    rc = d._replica_config
    opts = dict(rc.ray_actor_options or {})
    runtime_env = dict(opts.get("runtime_env") or {})
    runtime_env["env_vars"] = {**(runtime_env.get("env_vars") or {}), **env}
    opts["runtime_env"] = runtime_env
    return Application(
        d.options(ray_actor_options=opts, _init_args=tuple(rewrap(a) for a in rc.init_args),
                  _init_kwargs={k: rewrap(v) for k, v in (rc.init_kwargs or {}).items()})
    )


def fake_config(app_name: str = APP_NAME):
    from gemma_serving.config import ServingConfig, parse_config

    data: dict[str, Any] = {
        "app_name": app_name,
        "router": {"host": "127.0.0.1", "port": 0},
        "services": {
            "text": {
                "model": {"name": MODEL, "source": "/nope", "default_max_tokens": 64, "max_output_tokens": 1024},
                "deployment": {"num_cpus": 0.1, "max_ongoing_requests": 256},
            }
        },
    }
    if "telemetry" in ServingConfig.model_fields:
        data["telemetry"] = {"metrics_port": 0}
    if "http_port" in ServingConfig.model_fields["router"].annotation.model_fields:
        # A free port for the OpenAI-compatible HTTP surface too: with the fixed default (8088) a second router on
        # this machine fails to bind, and that failure hangs the replica's initialisation instead of failing it.
        data["router"]["http_port"] = 0
    return parse_config(data)


class InProcessBackend:
    """The router's Backend protocol over an engine in the same process (as tests/unit do)."""

    def __init__(self, engine) -> None:
        self.engine = engine

    async def probe(self, kind) -> None:
        await self.engine.check_health()

    async def stream(self, kind, request, request_id: str) -> AsyncIterator:
        gen = self.engine.generate(request, request_id=request_id)
        try:
            async for chunk in gen:
                yield chunk
        finally:
            await gen.aclose()


async def _router_server_main() -> None:
    from gemma_serving.router.server import start_grpc_server

    started = await start_grpc_server(fake_config(), InProcessBackend(TrivialEngine()))
    server, port = started[:2] if isinstance(started, tuple) else (started.server, started.port)
    print(f"PORT {port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(0)


class HandleTarget:
    """Streams from the text deployment through a Serve handle, from the driver."""

    name = "handle"

    def __init__(self, handle) -> None:
        self.handle = handle.options(stream=True)

    async def stream(self, prompt: str, sampling: SamplingSpec) -> AsyncIterator[tuple[str, int | None]]:
        from gemma_serving.engines.types import GenerationRequest, Message, Sampling, TextPart

        request = GenerationRequest(
            MODEL, (Message("user", (TextPart(prompt),)),), Sampling(max_tokens=sampling.max_tokens, temperature=0.0)
        )
        response = self.handle.generate.remote(request, uuid.uuid4().hex)
        async for chunk in response:
            yield chunk.text, chunk.completion_tokens


def start_ray(*, num_gpus: int = 0, throughput_optimized: bool = False, worker_niceness: int | None = 0) -> None:
    """A local Ray instance (all cores) and Serve; optionally in Serve's throughput-optimized mode.

    Ray starts its worker processes (every Serve replica, and so the vLLM engine processes a replica spawns) at
    nice 15 (`RAY_worker_niceness`), while the baselines run at the niceness of this process (0): on a shared,
    oversubscribed machine that alone starves the platform. `worker_niceness=0` makes the comparison fair; None
    keeps Ray's default.

    RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (Ray Serve 2.60) runs user code and handle routers on the replica's main event
    loop, uses gRPC between handles and replicas, and buffers request logs. Serve reads it at import, in every
    process: it is set for Ray's processes (which inherit this environment at ray.init) and removed again before this
    driver imports Serve (a driver outside an event loop cannot use handles in that mode).
    """
    import socket

    import ray

    if throughput_optimized:
        if "ray.serve" in sys.modules:
            raise RuntimeError("throughput-optimized Serve must be chosen before ray.serve is imported")
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    os.environ["BENCH_SERVE_THROUGHPUT_OPTIMIZED"] = "1" if throughput_optimized else "0"
    if worker_niceness is not None:
        os.environ["RAY_worker_niceness"] = str(worker_niceness)  # read by the raylet at ray.init
    try:
        ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), num_gpus=num_gpus,
                 include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    finally:
        if throughput_optimized:
            del os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"]
    from ray import serve

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        http_port = sock.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})


def run(*, quick: bool = False, rounds: int | None = None, ray_started: bool = False,
        throughput_optimized: bool = False, with_tp: bool = False,
        progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every path; returns the results dict (see write())."""
    import subprocess

    if not ray_started:
        start_ray(throughput_optimized=throughput_optimized)
    from gemma_serving.app import build_app
    from ray import serve

    sizes = SIZES["quick" if quick else "full"]
    rounds = rounds or (1 if quick else 2)
    config = fake_config()
    t = time.perf_counter()
    handle = serve.run(build_app(config, engine_factory=fake_engine_factory, checkpoint_resolver=Path),
                       name=APP_NAME, route_prefix=None)
    port = handle.port.remote().result()
    progress(f"fake platform up in {time.perf_counter() - t:.1f} s (router port {port})")
    paths = [p for p in PATHS if with_tp or p != "platform-tp"]
    if with_tp:
        t = time.perf_counter()
        tp_app = with_env(build_app(fake_config(APP_NAME + "-tp"), engine_factory=fake_engine_factory,
                                    checkpoint_resolver=Path), SERVE_TP_ENV)
        tp_port = serve.run(tp_app, name=APP_NAME + "-tp", route_prefix=None).port.remote().result()
        progress(f"fake platform-tp up in {time.perf_counter() - t:.1f} s (router port {tp_port})")
    proc = subprocess.Popen([sys.executable, __file__, "--router-server"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"router-only server did not start: {line!r}")
    router_port = int(line.split()[1])
    prompts = make_prompts(16)

    async def measure() -> list[dict[str, Any]]:
        targets: dict[str, Any] = {
            "direct": EngineTarget(TrivialEngine(), MODEL, name="direct"),
            "handle": HandleTarget(serve.get_deployment_handle("text", app_name=APP_NAME)),
            "router": GrpcTarget(f"127.0.0.1:{router_port}", MODEL, name="router"),
            "platform": GrpcTarget(f"127.0.0.1:{port}", MODEL, name="platform"),
        }
        if with_tp:
            targets["platform-tp"] = GrpcTarget(f"127.0.0.1:{tp_port}", MODEL, name="platform-tp")
        for tg in targets.values():
            if isinstance(tg, GrpcTarget):
                await tg.open()
        steps = []
        try:
            for name, tg in targets.items():  # warm-up
                await run_closed(tg, prompts, SamplingSpec(max_tokens=8), concurrency=4, requests=32)
            k = 0
            for r in range(rounds):
                for (c, tokens), n in sizes.items():
                    order = paths[k % len(paths):] + paths[: k % len(paths)]
                    k += 1
                    for name in order:
                        recs = await run_closed(targets[name], prompts, SamplingSpec(max_tokens=tokens),
                                                concurrency=c, requests=n)
                        s = summarize(recs, target=name, mode="closed", concurrency=c, max_tokens=tokens, round=r)
                        steps.append(s)
                        progress(
                            f"  {name:>8} c={c:<3} tokens={tokens:<3} ttft p50/p99 {s['ttft_ms']['p50']}/"
                            f"{s['ttft_ms']['p99']} ms  e2e p50/p99 {s['e2e_ms']['p50']}/{s['e2e_ms']['p99']} ms  "
                            f"{s['requests_per_s']} req/s  chunks/req {s['chunks_per_request_mean']}"
                            + (f"  errors {s['errors']}" if s["errors"] else "")
                        )
        finally:
            for tg in targets.values():
                if isinstance(tg, GrpcTarget):
                    await tg.close()
        return steps

    try:
        steps = asyncio.run(measure())
    finally:
        proc.stdin.close()
        proc.wait(10)
        serve.delete(APP_NAME)
        if with_tp:
            serve.delete(APP_NAME + "-tp")
        if not ray_started:
            import ray

            serve.shutdown()
            ray.shutdown()
    return {"benchmark": "router_overhead", "started_unix": round(time.time()), "rounds": rounds,
            "serve_throughput_optimized": _serve_mode(),
            "sizes": {f"c{c}_tokens{t}": n for (c, t), n in sizes.items()}, "steps": steps,
            **analyse(steps)}


def _serve_mode() -> bool:
    """Whether this Ray instance's replicas run in Serve's throughput-optimized mode."""
    return os.environ.get("BENCH_SERVE_THROUGHPUT_OPTIMIZED") == "1"


def _med(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None


def analyse(steps: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for s in steps:
        key = f"c{s['concurrency']}_tokens{s['max_tokens']}"
        table.setdefault(key, {}).setdefault(s["target"], []).append(s)
    summary: dict[str, Any] = {}
    added: dict[str, Any] = {}
    for key, paths in table.items():
        summary[key] = {}
        for name, ss in paths.items():
            summary[key][name] = {
                "ttft_p50_ms": _med([s["ttft_ms"]["p50"] for s in ss]),
                "ttft_p99_ms": _med([s["ttft_ms"]["p99"] for s in ss]),
                "e2e_p50_ms": _med([s["e2e_ms"]["p50"] for s in ss]),
                "e2e_p99_ms": _med([s["e2e_ms"]["p99"] for s in ss]),
                "requests_per_s": _med([s["requests_per_s"] for s in ss]),
                "chunks_per_request": _med([s["chunks_per_request_mean"] for s in ss]),
                "errors": sum(sum(s["errors"].values()) for s in ss),
            }
        base = summary[key].get("direct")
        if base:
            added[key] = {
                name: {m.replace("_ms", "_added_ms"): round(v[m] - base[m], 3) for m in
                       ("ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms")}
                for name, v in summary[key].items() if name != "direct"
            }
    return {"summary": summary, "added": added}


def write(results: dict[str, Any], out: Path) -> None:
    results.setdefault("machine", {
        "cpu_count": os.cpu_count(), "python": pyplatform.python_version(), "platform": pyplatform.platform(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results["summary"])
    fig, axes = plt.subplots(1, len(keys), figsize=(4.3 * len(keys), 4.2))
    colors = {"direct": "#7f7f7f", "handle": "#ff7f0e", "router": "#2ca02c", "platform": "#1f77b4",
              "platform-tp": "#9467bd"}
    for ax, key in zip(axes, keys):
        paths = [p for p in PATHS if p in results["summary"][key]]
        p50 = [results["summary"][key][p]["e2e_p50_ms"] for p in paths]
        p99 = [results["summary"][key][p]["e2e_p99_ms"] for p in paths]
        xs = range(len(paths))
        ax.bar([x - 0.2 for x in xs], p50, 0.4, color=[colors[p] for p in paths], label="p50")
        ax.bar([x + 0.2 for x in xs], p99, 0.4, color=[colors[p] for p in paths], alpha=0.45, label="p99")
        for x, v in zip(xs, p50):
            ax.annotate(f"{v:.2g}", (x - 0.2, v), ha="center", va="bottom", fontsize=7)
        for x, v in zip(xs, p99):
            ax.annotate(f"{v:.2g}", (x + 0.2, v), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(xs), paths, fontsize=7)
        ax.set_yscale("log")
        ax.set_title(f"end-to-end latency, ms: {key.replace('_', ', ')}\n(solid p50, light p99)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Router overhead, trivial engine (no work per token), {os.cpu_count()} cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int)
    p.add_argument("--serve-throughput-optimized", action="store_true",
                   help="run the whole Ray instance with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (see start_ray)")
    p.add_argument("--with-tp", action="store_true",
                   help="also measure platform-tp: the platform with that setting in its replicas only")
    p.add_argument("--out", default=str(RESULTS_DIR / "router_overhead.json"))
    p.add_argument("--router-server", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.router_server:
        asyncio.run(_router_server_main())
        return
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    results = run(quick=args.quick, rounds=args.rounds, throughput_optimized=args.serve_throughput_optimized,
                  with_tp=args.with_tp, progress=progress)
    results["serve_throughput_optimized"] = args.serve_throughput_optimized
    write(results, Path(args.out))
    for key, paths in results["added"].items():
        for name, v in paths.items():
            print(f"{key:>16} {name:>9} added: {v}")
    progress(f"wrote {args.out}")


if __name__ == "__main__":
    main()

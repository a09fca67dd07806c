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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Serve's proxies bind with SO_REUSEPORT by default: another cluster on this box could silently share our port.
os.environ.setdefault("SERVE_SOCKET_REUSE_PORT_ENABLED", "0")

import grpc
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.config import ServiceKind, ServingConfig, parse_config
from gemma_serving.engines.fake import FakeEngine
from gemma_serving.engines.types import Chunk, GenerationRequest

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODEL = "t"
STREAM_TOKENS = 32
LONG_TOKENS = 10_000
CANCEL_STEP_DELAY_S = 0.001  # a 10,000-token stream then runs >= 10 s unless aborted
CANCEL_WAIT_S = 5.0
CANCEL_ATTEMPTS = 3

CONFIG: dict[str, Any] = {
    "router": {"port": 0},
    "services": {
        "text": {
            "model": {
                "name": MODEL,
                "source": "/nope",
                "default_max_tokens": STREAM_TOKENS,
                "max_output_tokens": LONG_TOKENS,
                "engine": {"max_model_len": 2 * LONG_TOKENS},
            },
            "deployment": {"num_cpus": 0.1},
        }
    },
}


def now() -> float:
    return time.perf_counter()


_T0 = now()


def progress(msg: str) -> None:
    print(f"[{now() - _T0:6.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------------------------------------------
# Engine (runs inside the text replica for A and B, inside the baseline server process for C)


def append_line(path: str, line: str) -> None:
    """Event log shared by processes (tiny appends; only the cancel test writes)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


class BenchEngine(FakeEngine):
    """FakeEngine with step_delay_s=0, except long requests (cancel test) step every CANCEL_STEP_DELAY_S.

    Long requests log `<event> <request_id> <unix time>` lines (start / aborted / done) to `log_path`.
    """

    def __init__(self, log_path: str) -> None:
        super().__init__(step_delay_s=0.0)
        self.log_path = log_path

    def _log(self, event: str, request_id: str) -> None:
        append_line(self.log_path, f"{event} {request_id} {time.time():.6f}")

    async def generate(self, request: GenerationRequest, *, request_id: str) -> AsyncIterator[Chunk]:
        long = request.sampling.max_tokens >= LONG_TOKENS
        # Only the cancel test sends long requests, and it sends them alone.
        self.step_delay_s = CANCEL_STEP_DELAY_S if long else 0.0
        if long:
            self._log("start", request_id)
        gen = super().generate(request, request_id=request_id)
        try:
            async for chunk in gen:
                yield chunk
        finally:
            await gen.aclose()
            if long:
                self._log("aborted" if request_id in self.aborted else "done", request_id)


def make_engine_factory(log_path: str):
    def factory(kind, model, path):
        return BenchEngine(log_path)

    return factory


def read_events(log_path: str) -> dict[str, dict[str, float]]:
    events: dict[str, dict[str, float]] = {}
    try:
        with open(log_path, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    events.setdefault(parts[1], {})[parts[0]] = float(parts[2])
    except FileNotFoundError:
        pass
    return events


# --------------------------------------------------------------------------------------------------------------
# Design A: ingress deployment behind Serve's native gRPC proxy


class ServeGrpcIngress:
    """Serve gRPC ingress: method names are the gRPC method names; same work as our InferenceServicer."""

    def __init__(self, config: dict, handles: dict, log_path: str) -> None:
        from gemma_serving.router.backends import ServeHandleBackend

        self._config = ServingConfig.model_validate(config)
        self._backend = ServeHandleBackend(handles)
        self._log_path = log_path

    def _validated(self, request: pb.GenerateRequest):
        from gemma_serving.api.convert import request_from_pb
        from gemma_serving.router.validation import validate_request

        return validate_request(request_from_pb(request), self._config)

    async def Generate(self, request: pb.GenerateRequest) -> pb.GenerateResponse:
        from gemma_serving.api.convert import response_to_pb

        request_id = uuid.uuid4().hex
        kind, domain = self._validated(request)
        texts, last = [], None
        async for chunk in self._backend.stream(kind, domain, request_id):
            texts.append(chunk.text)
            last = chunk
        return response_to_pb("".join(texts), last, request_id, request.model)

    async def GenerateStream(self, request: pb.GenerateRequest) -> AsyncIterator[pb.GenerateChunk]:
        from gemma_serving.api.convert import chunk_to_pb

        request_id = uuid.uuid4().hex
        kind, domain = self._validated(request)
        stream = self._backend.stream(kind, domain, request_id)
        try:
            async for chunk in stream:
                yield chunk_to_pb(chunk, request_id)
        except (asyncio.CancelledError, GeneratorExit) as exc:
            # Records whether the proxy passed the client's cancel on to this replica (cancel test only).
            if domain.sampling.max_tokens >= LONG_TOKENS:
                append_line(self._log_path, f"ingress_{type(exc).__name__} {request_id} {time.time():.6f}")
            raise
        finally:
            await stream.aclose()

    async def ListModels(self, request: pb.ListModelsRequest) -> pb.ListModelsResponse:
        return pb.ListModelsResponse()


def build_design_a(config: ServingConfig, engine_factory, log_path: str):
    from gemma_serving.app import deployment_options
    from gemma_serving.deployments.modality import ModalityDeployment
    from ray import serve

    service = config.services[ServiceKind.TEXT]
    text = serve.deployment(ModalityDeployment).options(**deployment_options(ServiceKind.TEXT, service))
    text_app = text.bind(
        "text", service.model_dump(mode="json"), engine_factory=engine_factory, checkpoint_resolver=Path
    )
    ingress = serve.deployment(ServeGrpcIngress).options(
        name="ingress",
        # Same settings as our router deployment (Serve's default of 5 would throttle everything behind it).
        max_ongoing_requests=config.router.max_concurrent_rpcs,
        ray_actor_options={"num_cpus": config.router.num_cpus},
    )
    return ingress.bind(config.model_dump(mode="json"), {"text": text_app}, log_path)


# --------------------------------------------------------------------------------------------------------------
# Design C: plain grpc.aio server, engine in-process (run as a subprocess: `--c-server LOG_PATH`)


class EngineBackend:
    """Calls the engine in-process (as tests/unit/conftest.py does)."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    async def probe(self, kind: ServiceKind) -> None:
        await self.engine.check_health()

    async def stream(self, kind: ServiceKind, request: GenerationRequest, request_id: str) -> AsyncIterator[Chunk]:
        async for chunk in self.engine.generate(request, request_id=request_id):
            yield chunk


async def _c_server_main(log_path: str) -> None:
    from gemma_serving.router.server import start_grpc_server

    started = await start_grpc_server(parse_config(CONFIG), EngineBackend(BenchEngine(log_path)))
    # The return type has changed across versions: a (server, port, ...) tuple, or an object with both.
    server, port = started[:2] if isinstance(started, tuple) else (started.server, started.port)
    print(f"PORT {port}", flush=True)
    # Run until the parent closes our stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(0)


def start_design_c(log_path: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--c-server", log_path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"baseline server did not start: {line!r}")
    return proc, int(line.split()[1])


# --------------------------------------------------------------------------------------------------------------
# Client-side measurements


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


async def unary_concurrent(stub, md, n: int, c: int) -> dict:
    req = request(1)
    lat: list[float] = []
    errors: list[str] = []
    remaining = n

    async def worker():
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t = now()
            try:
                await stub.Generate(req, metadata=md, timeout=60)
                lat.append(now() - t)
            except grpc.aio.AioRpcError as e:
                errors.append(e.code().name)

    t0 = now()
    await asyncio.gather(*(worker() for _ in range(c)))
    elapsed = now() - t0
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
    errors: list[str] = []
    remaining = n

    async def worker():
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t = now()
            first = None
            count = 0
            try:
                async for chunk in stub.GenerateStream(req, metadata=md, timeout=60):
                    if first is None:
                        first = now() - t
                    count += 1
                ttft.append(first)
                total.append(now() - t)
                chunks.append(count)
            except grpc.aio.AioRpcError as e:
                errors.append(e.code().name)

    t0 = now()
    await asyncio.gather(*(worker() for _ in range(c)))
    elapsed = now() - t0
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


# --------------------------------------------------------------------------------------------------------------


def install_pb_pickle_shim(workdir: Path) -> None:
    """Alias gemma.serving.v1.inference_pb2 -> gemma_serving.api.inference_pb2 here and in Ray workers."""
    pkg = workdir / "pbshim" / "gemma" / "serving" / "v1"
    pkg.mkdir(parents=True)
    for d in (pkg.parent.parent, pkg.parent, pkg):
        (d / "__init__.py").write_text("")
    (pkg / "inference_pb2.py").write_text(
        "import sys\nimport gemma_serving.api.inference_pb2 as _m\nsys.modules[__name__] = _m\n"
    )
    root = str(workdir / "pbshim")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, root)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flat_metrics(d: dict) -> dict[str, float]:
    return {
        "unary_seq_p50_ms": d["unary_sequential"]["p50_ms"],
        "unary_seq_p99_ms": d["unary_sequential"]["p99_ms"],
        "unary_c32_rps": d["unary_c32"]["rps"],
        "stream_c1_ttft_p50_ms": d["stream_c1"]["ttft_p50_ms"],
        "stream_c1_total_p50_ms": d["stream_c1"]["total_p50_ms"],
        "stream_c16_ttft_p50_ms": d["stream_c16"]["ttft_p50_ms"],
        "stream_c16_total_p50_ms": d["stream_c16"]["total_p50_ms"],
        "stream_c16_tokens_per_s": d["stream_c16"]["tokens_per_s"],
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["designs"])
    labels = [f"{k}\n{results['designs'][k]['name']}" for k in names]
    colors = ["#d62728", "#1f77b4", "#7f7f7f"]
    panels = [
        ("unary_seq_p50_ms", "unary p50 latency, sequential (ms)\nlower is better"),
        ("unary_c32_rps", "unary throughput, concurrency 32 (req/s)\nhigher is better"),
        ("stream_c1_ttft_p50_ms", "stream time to first chunk p50, c=1 (ms)\nlower is better"),
        ("stream_c16_ttft_p50_ms", "stream time to first chunk p50, c=16 (ms)\nlower is better"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2))
    for ax, (key, title) in zip(axes, panels):
        vals = [results["designs"][k]["metrics"][key] for k in names]
        bars = ax.bar(range(len(vals)), vals, color=colors[: len(vals)])
        ax.set_xticks(range(len(vals)), labels, fontsize=8)
        ax.set_title(title, fontsize=9)
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:g}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8)
    m = results["machine"]
    fig.suptitle(
        f"Router designs, FakeEngine, {m['cpu_count']} cores, ray {m['ray']}, python {m['python']}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (smoke test)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of A, B, C (metrics are medians)")
    parser.add_argument("--out", default=str(RESULTS_DIR / "router_design.json"))
    parser.add_argument("--c-server", metavar="LOG_PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.c_server:
        asyncio.run(_c_server_main(args.c_server))
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

    for k, name in names.items():
        per_round = [x["metrics"] for x in rounds[k]]
        attempts = [a for x in rounds[k] for a in x["cancel"]["attempts"]]
        results["designs"][k] = {
            "name": name,
            "metrics": {m: round(statistics.median(x[m] for x in per_round), 3) for m in per_round[0]},
            "metrics_per_round": per_round,
            "cancel": {
                "reached_engine": sum(a["outcome"] == "aborted" for a in attempts),
                "of": len(attempts),
                "engine_stop_after_cancel_ms_max": max(
                    (a["engine_stop_after_cancel_ms"] for a in attempts if a["engine_stop_after_cancel_ms"]),
                    default=None,
                ),
                "attempts": attempts,
            },
            "rounds": [{key: v for key, v in x.items() if key not in ("metrics", "cancel")} for x in rounds[k]],
        }
    ma, mb, mc = (results["designs"][k]["metrics"] for k in "ABC")
    results["ratios"] = {
        "note": "median of B divided by median of A (or C); for *_ms lower is better, for rps / tokens_per_s "
        "higher is better",
        "B_over_A": {k: round(mb[k] / ma[k], 3) for k in mb if ma[k]},
        "B_over_C": {k: round(mb[k] / mc[k], 3) for k in mb if mc[k]},
    }
    results["cancel_summary"] = {
        k: f"{d['cancel']['reached_engine']}/{d['cancel']['of']} client cancels aborted the engine request"
        for k, d in results["designs"].items()
    }
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["wall_s"] = round(now() - _T0, 1)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    progress(f"wrote {out} and {out.with_suffix('.png')}")

    keys = list(ma)
    print(
        f"\n{'metric':28}"
        + "".join(f"{k + ' ' + results['designs'][k]['name']:>26}" for k in "ABC")
        + f"{'B/A':>8}{'B/C':>8}"
    )
    for key in keys:
        print(
            f"{key:28}"
            + "".join(f"{results['designs'][k]['metrics'][key]:>26g}" for k in "ABC")
            + f"{results['ratios']['B_over_A'].get(key, float('nan')):>8.2f}"
            + f"{results['ratios']['B_over_C'].get(key, float('nan')):>8.2f}"
        )
    print("cancel:", results["cancel_summary"])


if __name__ == "__main__":
    main()

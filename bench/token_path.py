"""The token path side by side: our gRPC and OpenAI surfaces vs vLLM's own OpenAI server vs AsyncLLM in-process
(and Ray Serve LLM's OpenAI app when it runs here), the same tiny checkpoint and engine flags, in one run.

One command (from the repository root; prints a line per step):

    .venv/bin/python bench/token_path.py                 # concurrency 1/16/32/64, ~10 min on the 2-core box
    .venv/bin/python bench/token_path.py --quick         # concurrency 16/32, fewer requests, ~5 min
    .venv/bin/python bench/token_path.py --quick --no-direct-calls   # every request a Serve handle call

Targets (all up at once; each step runs on one target at a time, the order rotated per level, so drifting background
load hits all alike):

* grpc / openai: our platform (text service only, LoRA off like vLLM's server, engine metrics and health probes off)
  on a local Ray instance: client -> router replica (gRPC GenerateStream, or /v1/chat/completions SSE) -> unary Serve
  call + delta channel -> text replica -> vLLM AsyncLLM -> engine core.
* vllm-server: `python -m vllm.entrypoints.openai.api_server` on the same checkpoint and flags (--disable-log-stats).
* engine: the same VllmEngine in-process in a subprocess that also runs the load (the physical limit: no serving
  layer at all).
* ray-serve-llm (--with-ray-serve-llm): `ray.serve.llm.build_openai_app` on the same Ray instance, CPU.

Every request: greedy, seed 0, exactly --output-len tokens (ignore_eos), streaming. Per step: output tok/s, TTFT and
ITL p50/p99 (bench/loadgen.py), and CPU seconds of each process group from /proc (bench/procstats.py) per output
token. Then, per round, open-loop steps (--rates, Poisson arrivals at the same request rates and seed for every
target): closed loop, a target that serves more tokens per second runs bigger engine batches and so longer steps, which
confounds ITL; at an equal offered load the ITL and TTFT figures compare like for like.
Results: bench/results/token_path.{json,png}; ratios are ours / vLLM's server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from bench_common import RESULTS_DIR, cpu_model, exit_stopping_ray, package_version, progress  # noqa: E402
from serving_targets import PROFILES, Subprocess, text_model_config  # noqa: E402  (sets up the environment)

import token_path_report as report  # noqa: E402
from loadgen import (OpenAIChatTarget, GrpcTarget, SamplingSpec, make_prompts, run_closed, run_poisson,  # noqa: E402
                     summarize)  # noqa: E402
from procstats import ProcessGroups  # noqa: E402

#: Process groups whose CPU is "the serving layer" of each target (engine core excluded), see procstats.py.
SERVING_GROUPS = {"grpc": ("tokenpath/router", "tokenpath/text"), "openai": ("tokenpath/router", "tokenpath/text"),
                  "vllm-server": ("vllm-server",), "engine": (),
                  # Its ingress and LLMServer replicas (engine core excluded; Serve's HTTP proxy is in ray-system).
                  "ray-serve-llm": ("ray-serve-llm/",)}


def model_config(output_len: int) -> dict[str, Any]:
    cfg = text_model_config(PROFILES["cpu"], None, output_len)
    cfg["adapters"] = []  # vLLM's server runs without LoRA: so do we (a registry would enable LoRA too)
    cfg["adapter_registry"] = None
    return cfg


def start_platform(model_cfg: dict[str, Any], stream_flush_ms: float | None,
                   direct_calls: bool = True, stream_flush_max_ms: float | None = None) -> tuple[int, int]:
    """Our platform, text only, on a local Ray instance; returns (gRPC port, HTTP port)."""
    from gemma_serving.app import build_app
    from ray import serve
    from router_overhead import start_ray
    from serving_targets import platform_config

    start_ray(worker_niceness=0)  # replicas at nice 0 like vLLM's server
    config = platform_config(model_cfg, PROFILES["cpu"], "tokenpath")
    data = config.model_dump(mode="json")
    data["telemetry"]["engine_metrics"] = False  # vLLM's server runs with --disable-log-stats
    data["services"]["text"]["deployment"]["health_probe"] = {"enabled": False}
    if stream_flush_ms is not None:
        data["services"]["text"]["deployment"]["stream_flush_ms"] = stream_flush_ms
    if stream_flush_max_ms is not None:
        data["services"]["text"]["deployment"]["stream_flush_max_ms"] = stream_flush_max_ms
    data["services"]["text"]["deployment"]["direct_calls"] = direct_calls
    from gemma_serving.config import parse_config

    config = parse_config(data)
    handle = serve.run(build_app(config), name=config.app_name, route_prefix=None)
    return handle.port.remote().result(), handle.http_port.remote().result()


def start_ray_serve_llm(model_cfg: dict[str, Any], model_dir: Path) -> str:
    """Ray Serve LLM's OpenAI app on the running Ray instance (Serve's HTTP proxy); returns its base URL."""
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    e = model_cfg["engine"]
    llm = LLMConfig(
        model_loading_config={"model_id": model_cfg["name"], "model_source": str(model_dir)},
        accelerator_config={"kind": "cpu"},
        engine_kwargs={"dtype": e["dtype"], "max_model_len": e["max_model_len"], "max_num_seqs": e["max_num_seqs"],
                       "enforce_eager": e["enforce_eager"], "disable_log_stats": True},
        log_engine_metrics=False,  # like vLLM's server here: --disable-log-stats
        # Its default bundle asks for 2 CPUs, more than the 2-core box has free beside the other targets.
        placement_group_config={"bundles": [{"CPU": 0.25}], "strategy": "PACK"},
        deployment_config={"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
        runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": str(e["cpu_kv_cache_gib"])}},
    )
    # Its ingress asks for a whole CPU by default: a fraction, as for our router.
    app = build_openai_app({"llm_configs": [llm], "ingress_deployment_config": {"ray_actor_options": {"num_cpus": 0.1}}})
    serve.run(app, name="ray-serve-llm", route_prefix="/")
    return f"http://127.0.0.1:{serve.context._get_global_client().http_config.port}"


class EngineStepTarget:
    """The in-process engine: each step runs inside its subprocess (bench/serving_targets.engine_worker_main)."""

    name = "engine"

    def __init__(self, sub: Subprocess) -> None:
        self.sub = sub

    async def step(self, concurrency: int, requests: int, rate: float | None = None) -> dict[str, Any]:
        """Closed loop at `concurrency`, or open loop (Poisson arrivals) at `rate` requests/s when given."""
        level = {"mode": "closed", "concurrency": concurrency} if rate is None else {"mode": "poisson", "rate": rate}
        self.sub.send({**level, "requests": requests, "target": "engine"})
        kind, payload = await asyncio.to_thread(self.sub.wait_message, 900)
        if kind != "RESULT" or "failed" in payload:
            raise RuntimeError(f"engine worker: {kind} {payload}")
        return payload


async def one_step(target, prompts, sampling, level, requests: int, open_loop: bool) -> dict[str, Any]:
    """One target at one level: closed loop at concurrency `level`, or open loop at `level` requests/s."""
    if isinstance(target, EngineStepTarget):
        return await (target.step(0, requests, rate=level) if open_loop else target.step(level, requests))
    if open_loop:
        return summarize(await run_poisson(target, prompts, sampling, rate=level, requests=requests))
    return summarize(await run_closed(target, prompts, sampling, concurrency=level, requests=requests))


async def measure(targets: dict[str, Any], levels: list, requests_for, prompts, sampling, groups,
                  round_index: int = 0, platform_facts=None, open_loop: bool = False) -> list:
    """Every target at every level, order rotated; `platform_facts()`: the text replica's describe() after each of
    our surfaces' steps (its coalescing window), read after the step's CPU was taken. A level is a concurrency, or
    with `open_loop` a request rate (Poisson arrivals, the same seed for every target): the same offered load, so
    latencies compare at equal batch sizes whatever each target's closed-loop throughput."""
    steps = []
    names = list(targets)
    key = "rate" if open_loop else "concurrency"
    for i, level in enumerate(levels):
        shift = (i + round_index) % len(names)
        order = names[shift:] + names[:shift]
        for name in order:
            target, n = targets[name], requests_for(level)
            before, began = groups.snapshot(), time.perf_counter()
            summary = await one_step(target, prompts, sampling, level, n, open_loop)
            summary["cpu_s"] = ProcessGroups.diff(before, groups.snapshot())
            summary["wall_s"] = round(time.perf_counter() - began, 2)
            summary["target"], summary[key], summary["round"] = name, level, round_index
            summary.pop("mode", None)
            if open_loop:
                summary["concurrency"] = None
            summary["serving_cpu_ms_per_token"] = report.serving_cpu_per_token(summary, SERVING_GROUPS[name])
            if platform_facts is not None and name in ("grpc", "openai"):
                summary["stream_window_ms"] = (await platform_facts()).get("stream_window_ms")
            steps.append(summary)
            progress(report.line(summary))
    return steps


async def warm_up(targets: dict[str, Any], prompts, sampling) -> None:
    for name, target in targets.items():
        if isinstance(target, EngineStepTarget):
            await target.step(2, 4)
        else:
            await run_closed(target, prompts, sampling, concurrency=2, requests=4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", default="1,16,32,64")
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="concurrency 16,32 and fewer requests")
    p.add_argument("--targets", default="grpc,openai,vllm-server,engine")
    p.add_argument("--stream-flush-ms", type=float, default=None,
                   help="the platform's deployment.stream_flush_ms (default: the config's)")
    p.add_argument("--stream-flush-max-ms", type=float, default=None,
                   help="the platform's deployment.stream_flush_max_ms (default: the config's; 0: a fixed window)")
    p.add_argument("--with-ray-serve-llm", action="store_true", help="also start Ray Serve LLM's OpenAI app")
    p.add_argument("--rates", default="4,12",
                   help="open-loop steps after each round's ladder: Poisson arrivals at these requests/s, the same "
                        "for every target ('' for none)")
    p.add_argument("--rounds", type=int, default=3,
                   help="repeat the whole ladder; figures and ratios are medians over rounds (ratios within a round)")
    p.add_argument("--no-direct-calls", action="store_true",
                   help="the platform with deployment.direct_calls off (every request a Serve handle call)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "token_path.json")
    p.add_argument("--replot", action="store_true",
                   help="only recompute the per-token figures and ratios, redraw the PNG and print the table from --out")
    args = p.parse_args()
    if args.replot:
        data = json.loads(args.out.read_text())
        for step in data["steps"] + data.get("open_loop_steps", []):
            step["serving_cpu_ms_per_token"] = report.serving_cpu_per_token(step, SERVING_GROUPS[step["target"]])
        data["ratios"] = report.ratios(data["steps"])
        if data.get("open_loop_steps"):
            data["open_loop_ratios"] = report.ratios(data["open_loop_steps"], "rate")
        args.out.write_text(json.dumps(data, indent=1))
        report.plot(data, args.out.with_suffix(".png"))
        print(report.markdown(data))
        return
    levels = [16, 32] if args.quick else [int(x) for x in args.concurrency.split(",")]
    rates = [float(x) for x in args.rates.split(",") if x]
    # Enough requests per step that /proc's 10 ms CPU ticks and background work are small next to the step's CPU.
    requests_for = (lambda c: max(32, 4 * c)) if args.quick else (lambda c: max(48, 6 * c))
    wanted = [t for t in args.targets.split(",") if t]
    from ecosystem import VllmServerTarget
    from gemma_serving.models import resolve_model_source

    model_cfg = model_config(args.output_len)
    model_dir = resolve_model_source(model_cfg["source"], progress=lambda m: progress(f"model: {m}"))
    prompts = make_prompts(64)
    sampling = SamplingSpec(max_tokens=args.output_len, ignore_eos=True)
    logdir = Path(os.environ.get("TMPDIR", "/tmp")) / "token_path_bench"
    logdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "token_path", "started_unix": round(time.time()),
        "machine": {"cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "loadavg_at_start": os.getloadavg(),
                    "vllm": package_version("vllm"), "ray": package_version("ray")},
        "workload": {"levels": levels, "open_loop_rates": rates, "rounds": args.rounds, "requests": {c: requests_for(c) for c in levels},
                     "output_len": args.output_len, "ignore_eos": True, "greedy": True},
        "engine": {k: model_cfg["engine"][k] for k in ("dtype", "max_model_len", "max_num_seqs", "enforce_eager")},
        "startup_s": {}, "stream_flush_ms": args.stream_flush_ms,
        "stream_flush_max_ms": args.stream_flush_max_ms, "direct_calls": not args.no_direct_calls,
    }
    groups, targets, subs = ProcessGroups(), {}, {}
    vllm_server = VllmServerTarget(model_cfg, model_dir, logdir / "vllm_server.log")
    try:
        t = time.perf_counter()
        if "engine" in wanted:
            spec = {"engine": "vllm", "model": model_cfg, "device": "cpu", "prompts": len(prompts),
                    "sampling": sampling.__dict__}
            subs["engine"] = Subprocess("engine", [sys.executable, str(BENCH_DIR / "serving.py"), "--engine-worker",
                                                   json.dumps(spec)], logdir / "engine_worker.log")
        if "grpc" in wanted or "openai" in wanted:
            grpc_port, http_port = start_platform(model_cfg, args.stream_flush_ms, not args.no_direct_calls,
                                                 args.stream_flush_max_ms)
            result["startup_s"]["platform"] = round(time.perf_counter() - t, 1)
            progress(f"platform up (gRPC {grpc_port}, HTTP {http_port})")
            if "grpc" in wanted:
                targets["grpc"] = GrpcTarget(f"127.0.0.1:{grpc_port}", model_cfg["name"])
            if "openai" in wanted:
                targets["openai"] = OpenAIChatTarget(f"http://127.0.0.1:{http_port}", model_cfg["name"])
        if "vllm-server" in wanted:
            t = time.perf_counter()
            targets["vllm-server"] = OpenAIChatTarget(vllm_server.__enter__(), model_cfg["name"], name="vllm-server")
            result["startup_s"]["vllm-server"] = round(time.perf_counter() - t, 1)
            report.label_server(groups, vllm_server.proc.pid, "vllm-server")
        if args.with_ray_serve_llm:
            try:
                t = time.perf_counter()
                url = start_ray_serve_llm(model_cfg, model_dir)
                targets["ray-serve-llm"] = OpenAIChatTarget(url, model_cfg["name"], name="ray-serve-llm")
                result["startup_s"]["ray-serve-llm"] = round(time.perf_counter() - t, 1)
            except Exception as exc:  # noqa: BLE001 - recorded: the reason it cannot run here
                result["ray_serve_llm_error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
                progress(f"ray serve llm did not start: {result['ray_serve_llm_error']}")
        if "engine" in wanted:
            kind, payload = subs["engine"].wait_message(600)
            if kind != "READY":
                raise RuntimeError(f"engine worker did not start: {kind} {payload}")
            result["startup_s"]["engine"] = payload["start_s"]
            report.label_server(groups, subs["engine"].proc.pid, "engine-inprocess")
            targets["engine"] = EngineStepTarget(subs["engine"])

        facts = None
        if "grpc" in wanted or "openai" in wanted:
            from ray import serve

            facts = serve.get_deployment_handle("text", app_name="tokenpath").describe.remote

        async def go() -> list:
            for target in targets.values():
                if hasattr(target, "open"):
                    await target.open()
            try:
                await warm_up(targets, prompts, sampling)
                steps: list = []
                for r in range(args.rounds):
                    progress(f"round {r + 1} of {args.rounds}")
                    steps += await measure(targets, levels, requests_for, prompts, sampling, groups, r, facts)
                    open_steps.extend(await measure(targets, rates, lambda rate: max(48, round(8 * rate)), prompts,
                                                    sampling, groups, r, facts, open_loop=True))
                return steps
            finally:
                for target in targets.values():
                    if hasattr(target, "close"):
                        await target.close()

        open_steps: list = []
        result["steps"] = asyncio.run(go())
        result["open_loop_steps"] = open_steps
    finally:
        for sub in subs.values():
            sub.stop()
        vllm_server.__exit__()
    result["loadavg_at_end"] = os.getloadavg()
    result["ratios"] = report.ratios(result["steps"])
    result["open_loop_ratios"] = report.ratios(open_steps, "rate")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    report.plot(result, args.out.with_suffix(".png"))
    print(report.markdown(result))
    exit_stopping_ray()


if __name__ == "__main__":
    main()

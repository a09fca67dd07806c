"""One serving benchmark run: bring every wanted target up (Ray and the platform apps, the engine worker, the naive
service), run the plan, take everything down, run the router overhead micro-benchmark, write JSON + PNG + tables."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform as pyplatform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import BENCH_DIR, STARTED, cpu_model, now, package_version, progress
from loadgen import GrpcTarget, SamplingSpec, make_prompts
from serving_measure import aggregate, build_plan, measure, ratios, warm_up
from serving_output import plot, print_table
from serving_targets import (
    ALL_TARGETS,
    APP_NAMES,
    PLATFORMS,
    LocalGrpcTarget,
    RemoteEngineTarget,
    Subprocess,
    platform_config,
    start_platform,
    text_model_config,
)

NOTES = [
    "Same prompts (64 deterministic synthetic prompts), greedy decoding, max_tokens for every target.",
    "The API has no ignore_eos: throughput counts the tokens actually generated; see output_tokens_mean.",
    "naive sends each answer as one chunk: its TTFT equals its end-to-end latency and it has no ITL.",
    ("engine runs the load generator in the engine's own process (no gRPC client cost); platform and naive "
     "are measured from the benchmark driver over loopback gRPC."),
    "All targets are up for the whole run; steps run one at a time, target order rotated per step.",
    ("platform-paced: the platform with bench/paced_engine.py around VllmEngine (first chunk at once, then at "
     "most one chunk per pace_window_ms per stream): an experiment, not the shipped configuration."),
    "platform-tp: the platform with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 in its replicas (experiment).",
    ("platform-si: the platform with vLLM's stream_interval (engine.extra_args) set to stream_interval: the "
     "first token at once, then one delta every stream_interval tokens; the engine target keeps the default "
     "(1)."),
]


def describe_machine() -> dict[str, Any]:
    import grpc
    import psutil
    import ray

    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": pyplatform.python_version(),
        "platform": pyplatform.platform(),
        "ray": ray.__version__,
        "grpcio": grpc.__version__,
        "vllm": package_version("vllm"),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def start_ray_with_retry(profile: dict[str, Any], niceness: int | None) -> None:
    import ray
    from router_overhead import start_ray

    try:
        start_ray(num_gpus=profile["num_gpus"], worker_niceness=niceness)
    except Exception as exc:  # noqa: BLE001 - e.g. "The current node timed out during startup" when busy
        progress(f"ray did not start ({exc}); retrying once")
        ray.shutdown()
        start_ray(num_gpus=profile["num_gpus"], worker_niceness=niceness)


def start_platforms(
    wanted: list[str], profile: dict[str, Any], model_cfg: dict[str, Any], stream_interval: int,
    prompts: list[str], sampling: SamplingSpec, startup: dict[str, Any], targets: dict[str, Any],
) -> list:
    """Every wanted platform target, one after the other, into `targets` (start times into `startup`); their configs."""
    from router_overhead import SERVE_TP_ENV

    configs = []
    for name in PLATFORMS:
        if name not in wanted:
            continue
        t = now()
        cfg = model_cfg
        if name == "platform-si":
            # vLLM's stream_interval through the config's escape hatch: the first token at once, then a delta
            # every N tokens (and the last one).
            cfg = json.loads(json.dumps(model_cfg))
            cfg["engine"]["extra_args"] = {**cfg["engine"].get("extra_args", {}),
                                           "stream_interval": stream_interval}
        config = platform_config(cfg, profile, APP_NAMES[name])
        port = start_platform(config, profile["engine"], SERVE_TP_ENV if name == "platform-tp" else None,
                              paced=name == "platform-paced")
        configs.append(config)
        startup[f"{name}_app_s"] = round(now() - t, 1)
        progress(f"{name} up in {startup[f'{name}_app_s']} s (router on 127.0.0.1:{port})")
        targets[name] = LocalGrpcTarget(
            GrpcTarget(f"127.0.0.1:{port}", model_cfg["name"], name=name), prompts, sampling
        )
    return configs


async def warm_up_and_measure(targets: dict[str, Any], plan, groups) -> list[dict[str, Any]]:
    for t in targets.values():
        if isinstance(t, LocalGrpcTarget):
            await t.target.open()
    try:
        await warm_up(targets)
        return await measure(targets, plan, groups)
    finally:
        for t in targets.values():
            if isinstance(t, LocalGrpcTarget):
                await t.target.close()


def run(
    args: argparse.Namespace, profile: dict[str, Any], sizes: dict[str, Any], wanted: list[str], niceness: int | None,
) -> None:
    import ray
    from procstats import ProcessGroups

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Subprocess logs (vLLM, transformers) stay out of bench/results.
    logdir = Path(tempfile.mkdtemp(prefix="serving_bench_logs_"))
    machine = describe_machine()
    progress(f"machine: {machine}")
    progress(f"profile {args.profile}: {profile}; targets: {wanted}; sizes: {sizes}; subprocess logs: {logdir}")

    from gemma_serving.models import resolve_model_source

    model_cfg = text_model_config(profile, args.model_source, args.max_tokens)
    vllm_engines = sum(t in PLATFORMS or t == "engine" for t in wanted) if profile["engine"] == "vllm" else 0
    if profile["device"] == "cuda" and vllm_engines:
        # Several vLLM engines share the one GPU: split vLLM's memory fraction between them.
        model_cfg["engine"]["gpu_memory_utilization"] = round(0.85 / vllm_engines, 2)
    model_dir = resolve_model_source(model_cfg["source"], progress=lambda m: progress(f"model: {m}"))
    sampling = SamplingSpec(max_tokens=args.max_tokens, temperature=0.0, seed=0)
    prompts = make_prompts(64)
    groups = ProcessGroups()
    startup: dict[str, float] = {}
    subs: dict[str, Subprocess] = {}
    targets: dict[str, Any] = {}
    began = now()

    results: dict[str, Any] = {
        "benchmark": "serving",
        "started_unix": round(time.time()),
        "profile": args.profile,
        "engine": profile["engine"],
        "machine": machine,
        "sizes": {k: ({str(c): n for c, n in v.items()} if isinstance(v, dict) else v) for k, v in sizes.items()},
        "sampling": sampling.__dict__,
        "targets": wanted,
        "pace_window_ms": args.pace_window_ms,
        "stream_interval": args.stream_interval,
        "ray_worker_niceness": args.ray_worker_niceness,
        "model": model_cfg,
        "notes": NOTES,
    }
    try:
        t = now()
        if any(p in wanted for p in PLATFORMS) or not args.skip_router_overhead:
            start_ray_with_retry(profile, niceness)
            startup["ray_and_serve_s"] = round(now() - t, 1)
            progress(f"ray + serve up in {startup['ray_and_serve_s']} s")
        # The subprocess targets load while the platform starts (after Ray: Ray gives its raylet only 30 s to come
        # up, which a busy 2-core machine can miss).
        if "engine" in wanted:
            spec = {"engine": profile["engine"], "model": model_cfg, "device": profile["device"],
                    "prompts": len(prompts), "sampling": sampling.__dict__}
            # serving.py --engine-worker runs engine_worker_main (serving_targets.py) in the subprocess.
            subs["engine"] = Subprocess(
                "engine", [sys.executable, str(BENCH_DIR / "serving.py"), "--engine-worker", json.dumps(spec)],
                logdir / "engine_worker.log",
            )
            groups.label(subs["engine"].proc.pid, "engine-baseline")
        if "naive" in wanted:
            subs["naive"] = Subprocess(
                "naive",
                [sys.executable, str(BENCH_DIR / "naive_service.py"), "--stdin-lifetime", "--model-dir",
                 str(model_dir), "--device", profile["device"], "--dtype", profile["dtype"]],
                logdir / "naive_service.log",
            )
            groups.label(subs["naive"].proc.pid, "naive-service")
        configs = start_platforms(wanted, profile, model_cfg, args.stream_interval, prompts, sampling, startup, targets)
        if "engine" in wanted:
            kind, payload = subs["engine"].wait_message(600)
            if kind != "READY":
                raise RuntimeError(f"engine worker did not start ({kind} {payload}); see {subs['engine'].log.name}")
            startup["engine_worker_s"] = payload["start_s"]
            progress(f"engine (in-process) up: {payload}")
            targets["engine"] = RemoteEngineTarget(subs["engine"])
        if "naive" in wanted:
            line = subs["naive"].wait_line("PORT ", 600)
            naive_port = int(line.split()[1])
            startup["naive_service"] = line.strip()
            progress(f"naive service up: {line.strip()}")
            targets["naive"] = LocalGrpcTarget(
                GrpcTarget(f"127.0.0.1:{naive_port}", model_cfg["name"], name="naive"), prompts, sampling
            )
        startup["all_up_s"] = round(now() - began, 1)
        results["niceness"] = groups.niceness()
        progress(f"nice values: {results['niceness']}")
        results["startup"] = startup

        order = [t for t in ALL_TARGETS if t in targets]
        plan = build_plan(sizes, order)
        steps = asyncio.run(warm_up_and_measure(targets, plan, groups))
        results["steps"] = steps
        results["table"] = aggregate(steps)
        results["ratios"] = ratios(steps, args.goal_concurrency)
        results["machine"]["loadavg_at_end_of_comparison"] = [round(x, 2) for x in os.getloadavg()]

        # Written now, so that a failure in the micro-benchmark below does not lose the comparison.
        out.write_text(json.dumps(results, indent=2) + "\n")
        for name in list(subs):
            subs.pop(name).stop()
        if configs:
            from ray import serve

            for config in configs:
                # Not blocking: the vLLM replicas take up to their graceful-shutdown timeout to go.
                serve.delete(config.app_name, _blocking=False)
        if not args.skip_router_overhead:
            import router_overhead

            progress("router overhead micro-benchmark (trivial engine)")
            # Quick sizes (one round with --quick, two otherwise) keep the whole run near 10 minutes.
            ro = router_overhead.run(quick=True, rounds=1 if args.quick else 2, ray_started=True, progress=progress)
            ro_out = out.parent / "router_overhead.json"
            router_overhead.write(ro, ro_out)
            results["router_overhead"] = {"file": ro_out.name, "added": ro["added"]}
            progress(f"wrote {ro_out} and {ro_out.with_suffix('.png')}")
    finally:
        for sub in subs.values():
            sub.stop()
        if ray.is_initialized():
            from ray import serve

            try:
                serve.shutdown()
            finally:
                ray.shutdown()

    results["wall_s"] = round(now() - STARTED, 1)
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    print_table(results)
    progress(f"wrote {out} and {out.with_suffix('.png')}")

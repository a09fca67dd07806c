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
import platform as pyplatform
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT / "services"))
sys.path.insert(0, str(BENCH_DIR))
# Ray workers (replicas) must import bench modules (engine factories) by name: put bench/ on their path.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from loadgen import (
    EngineTarget,
    GrpcTarget,
    SamplingSpec,
    make_prompts,
    run_closed,
    run_poisson,
    short,
    summarize,
)

RESULTS_DIR = BENCH_DIR / "results"
APP_NAME = "bench"
MARK = "@@BENCH "

PROFILES: dict[str, dict[str, Any]] = {
    # This machine and CI: vLLM's CPU build on the tiny text model, fp32 as in configs/local.yaml.
    "cpu": {"engine": "vllm", "device": "cpu", "dtype": "float32", "num_gpus": 0, "replica_gpus": 0},
    # A lent accelerator without vLLM: bench/transformers_engine.py (batched HF generate) on CUDA, bf16. All
    # targets share the one GPU (one measured at a time): each platform replica takes a quarter of it in Ray.
    "gpu": {"engine": "transformers", "device": "cuda", "dtype": "bfloat16", "num_gpus": 1, "replica_gpus": 0.25},
}

SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "concurrency": [1, 8, 32, 64],
        "requests": {1: 12, 8: 32, 32: 96, 64: 128},
        # The naive service serves one request at a time: fewer requests keep its steps short.
        "naive_requests": {1: 6, 8: 16, 32: 32, 64: 64},
        "rates": [2.0, 8.0],
        "poisson_seconds": 6.0,
        "naive_max_rate": 2.0,
        "rounds": 2,
    },
    "quick": {
        "concurrency": [1, 32],
        "requests": {1: 8, 32: 64},
        "naive_requests": {1: 4, 32: 32},
        "rates": [8.0],
        "poisson_seconds": 5.0,
        "naive_max_rate": 0.0,
        "rounds": 1,
    },
}


def now() -> float:
    return time.perf_counter()


_T0 = now()


def progress(msg: str) -> None:
    print(f"[{now() - _T0:6.1f}s] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------------------
# Model and engine settings shared by every target


def text_model_config(profile: dict[str, Any], source: str | None, max_tokens: int) -> dict[str, Any]:
    """The local config's text model (name, limits, engine settings), adapted to the profile."""
    from gemma_serving.config import load_config

    model = load_config().services["text"].model.model_dump(mode="json")
    model["engine"]["dtype"] = profile["dtype"]
    if source:
        model["source"] = source
    model["default_max_tokens"] = max_tokens
    model["max_output_tokens"] = max(model["max_output_tokens"], max_tokens)
    return model


def make_engine(kind: str, model_cfg: dict[str, Any], path: Path, device: str):
    from gemma_serving.config import ModelConfig

    model = ModelConfig.model_validate(model_cfg)
    if kind == "vllm":
        from gemma_serving.engines.vllm import VllmEngine

        return VllmEngine(model, path, accepts=("text",))
    if kind == "transformers":
        from transformers_engine import TransformersEngine

        return TransformersEngine(
            path, name=model.name, device=device, dtype=model.engine.dtype,
            max_batch=model.engine.max_num_seqs, default_max_tokens=model.default_max_tokens,
        )
    raise ValueError(f"unknown engine {kind!r}")


def engine_factory_for(kind: str, paced: bool = False):
    """The engine factory build_app gets (None = the platform's default, vLLM)."""
    if paced:
        import paced_engine

        return paced_engine.paced_vllm_engine_factory if kind == "vllm" else paced_engine.paced_transformers_engine_factory
    if kind == "vllm":
        return None
    from transformers_engine import transformers_engine_factory

    return transformers_engine_factory


# --------------------------------------------------------------------------------------------------------------
# Target "engine": the engine in-process, in a subprocess driven over stdin/stdout


async def run_step(target, prompts: list[str], sampling: SamplingSpec, step: dict[str, Any]) -> dict[str, Any]:
    labels = {k: v for k, v in step.items() if k not in ("requests",)}
    if step["mode"] == "closed":
        recs = await run_closed(target, prompts, sampling, concurrency=step["concurrency"], requests=step["requests"])
    else:
        recs = await run_poisson(target, prompts, sampling, rate=step["rate"], requests=step["requests"])
    return summarize(recs, **labels)


def _emit(kind: str, payload: Any) -> None:
    sys.__stdout__.write(MARK + kind + " " + json.dumps(payload) + "\n")
    sys.__stdout__.flush()


async def engine_worker_main(spec: dict[str, Any]) -> None:
    from gemma_serving.models import resolve_model_source

    began = time.monotonic()
    path = resolve_model_source(spec["model"]["source"], progress=lambda m: None)
    engine = make_engine(spec["engine"], spec["model"], path, spec["device"])
    await engine.start()
    _emit("READY", {"start_s": round(time.monotonic() - began, 1)})
    target = EngineTarget(engine, spec["model"]["name"])
    prompts = make_prompts(spec["prompts"])
    sampling = SamplingSpec(**spec["sampling"])
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            step = json.loads(line)
            if step.get("op") == "quit":
                break
            try:
                _emit("RESULT", await run_step(target, prompts, sampling, step))
            except Exception as exc:  # noqa: BLE001 - reported to the driver; keep serving
                _emit("RESULT", {"failed": f"{type(exc).__name__}: {exc}"})
    finally:
        await engine.shutdown()


class Subprocess:
    """A child process whose stdout lines are read by a thread; lines starting with MARK are messages."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the subprocess
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            env={**os.environ, **(env or {})},
        )
        self.messages: queue.Queue = queue.Queue()
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if not self.log.closed:
                self.log.write(line)
                self.log.flush()
            if line.startswith(MARK):
                kind, _, payload = line[len(MARK):].partition(" ")
                self.messages.put((kind, json.loads(payload)))
            else:
                self.lines.put(line)
        self.messages.put(("EXIT", self.proc.wait()))

    def wait_message(self, timeout: float) -> tuple[str, Any]:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.name}: no message within {timeout:.0f} s (log: {self.log.name})") from None

    def wait_line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None and self.lines.empty():
                break
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line.startswith(prefix):
                return line
        raise TimeoutError(f"{self.name}: no {prefix!r} line (log: {self.log.name})")

    def send(self, obj: Any) -> None:
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 30) -> None:
        try:
            self.proc.stdin.close()
        except OSError:  # the child is gone already
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


class RemoteEngineTarget:
    """The engine target, driven in its subprocess: one step at a time."""

    name = "engine"

    def __init__(self, sub: Subprocess) -> None:
        self.sub = sub

    async def step(self, step: dict[str, Any]) -> dict[str, Any]:
        self.sub.send(step)
        kind, payload = await asyncio.to_thread(self.sub.wait_message, 900)
        if kind != "RESULT":
            raise RuntimeError(f"engine worker: {kind} {payload}")
        if "failed" in payload:
            raise RuntimeError(f"engine worker step failed: {payload['failed']}")
        return payload


class LocalGrpcTarget:
    """A gRPC target measured from this process."""

    def __init__(self, target: GrpcTarget, prompts: list[str], sampling: SamplingSpec) -> None:
        self.target = target
        self.name = target.name
        self.prompts = prompts
        self.sampling = sampling

    async def step(self, step: dict[str, Any]) -> dict[str, Any]:
        return await run_step(self.target, self.prompts, self.sampling, step)


# --------------------------------------------------------------------------------------------------------------
# Platform (Ray Serve app) start


def platform_config(model_cfg: dict[str, Any], profile: dict[str, Any], app_name: str = APP_NAME):
    from gemma_serving.config import ServingConfig, load_config, parse_config

    local = load_config()
    deployment = local.services["text"].deployment.model_dump(mode="json")
    deployment["num_gpus"] = profile["replica_gpus"]
    # Room for the largest concurrency step without queueing in Serve: admission is not what is measured here.
    deployment["max_ongoing_requests"] = max(deployment["max_ongoing_requests"], 256)
    data: dict[str, Any] = {
        "app_name": app_name,
        "router": {"host": "127.0.0.1", "port": 0},
        "services": {"text": {"model": model_cfg, "deployment": deployment}},
    }
    if "telemetry" in ServingConfig.model_fields:
        # A free metrics port: the default (9464) may be taken by another platform on the same machine.
        data["telemetry"] = {"metrics_port": 0}
    if "http_port" in ServingConfig.model_fields["router"].annotation.model_fields:
        # A free port for the OpenAI-compatible HTTP surface too: with the fixed default (8088) a second router on
        # this machine fails to bind, and that failure hangs the replica's initialisation instead of failing it.
        data["router"]["http_port"] = 0
    return parse_config(data)


def start_platform(config, engine_kind: str, env: dict[str, str] | None = None, paced: bool = False) -> int:
    """serve.run the platform app (build_app); `env` goes into every replica's environment (see with_env)."""
    from gemma_serving.app import build_app
    from ray import serve
    from router_overhead import with_env

    factory = engine_factory_for(engine_kind, paced)
    app = build_app(config, engine_factory=factory) if factory else build_app(config)
    if env:
        app = with_env(app, env)
    handle = serve.run(app, name=config.app_name, route_prefix=None)
    return handle.port.remote().result()


# --------------------------------------------------------------------------------------------------------------
# Measurement


def build_plan(sizes: dict[str, Any], targets: list[str]) -> list[list[dict[str, Any]]]:
    """Per round: steps; each step is a list of (target, load) runs, one per target, order rotated."""
    rounds = []
    for r in range(sizes["rounds"]):
        steps = []
        loads: list[dict[str, Any]] = [{"mode": "closed", "concurrency": c} for c in sizes["concurrency"]]
        loads += [{"mode": "poisson", "rate": rate} for rate in sizes["rates"]]
        for k, load in enumerate(loads):
            order = targets[(k + r) % len(targets):] + targets[: (k + r) % len(targets)]
            if r % 2:
                order = order[::-1]
            runs = []
            for t in order:
                if load["mode"] == "closed":
                    c = load["concurrency"]
                    n = (sizes["naive_requests"] if t == "naive" else sizes["requests"]).get(c, max(16, 2 * c))
                    runs.append({"target": t, **load, "requests": n, "round": r})
                else:
                    if t == "naive" and load["rate"] > sizes["naive_max_rate"]:
                        continue  # far beyond what one-at-a-time serving sustains: its queue would only grow
                    n = max(8, round(load["rate"] * sizes["poisson_seconds"]))
                    runs.append({"target": t, **load, "requests": n, "round": r})
            steps.append(runs)
        rounds.append(steps)
    return rounds


async def measure(targets: dict[str, Any], plan, groups) -> list[dict[str, Any]]:
    results = []
    for r, steps in enumerate(plan):
        for runs in steps:
            for run in runs:
                target = targets[run["target"]]
                before = groups.snapshot()
                t = now()
                summary = await target.step(run)
                wall = now() - t
                cpu = groups.diff(before, groups.snapshot())
                summary.update(target=run["target"], round=r, requests_planned=run["requests"])
                summary["cpu_s"] = cpu
                summary["step_wall_s"] = round(wall, 3)
                results.append(summary)
                progress(short(summary) + f"  [round {r}]")
    return results


async def warm_up(targets: dict[str, Any]) -> None:
    for name, target in targets.items():
        t = now()
        s = await target.step({"mode": "closed", "concurrency": 4, "requests": 8})
        progress(f"warm-up {name}: {now() - t:.1f}s, errors={s['errors']}")


# --------------------------------------------------------------------------------------------------------------
# Aggregation, ratios, plots


def _med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 3) if vals else None


def load_key(s: dict[str, Any]) -> str:
    return f"c{s['concurrency']}" if s["mode"] == "closed" else f"rate{s['rate']:g}"


def aggregate(steps: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """target -> load -> metrics (median over rounds)."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in steps:
        by.setdefault((s["target"], load_key(s)), []).append(s)
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for (target, load), ss in by.items():
        row: dict[str, Any] = {"rounds": len(ss), "mode": ss[0]["mode"]}
        row["concurrency" if ss[0]["mode"] == "closed" else "rate"] = ss[0].get("concurrency", ss[0].get("rate"))
        for key in ("output_tokens_per_s", "requests_per_s", "output_tokens_mean", "chunks_per_request_mean"):
            row[key] = _med([s[key] for s in ss])
        for metric in ("ttft_ms", "itl_ms", "e2e_ms", "chunk_gap_ms"):
            for q in ("p50", "p90", "p99"):
                row[f"{metric[:-3]}_{q}_ms"] = _med([s[metric][q] for s in ss])
        errors: dict[str, int] = {}
        for s in ss:
            for code, n in s["errors"].items():
                errors[code] = errors.get(code, 0) + n
        row["errors"] = errors
        row["requests"] = sum(s["requests"] for s in ss)
        cpu_groups = sorted({g for s in ss for g in s["cpu_s"]})
        tokens = sum(s["output_tokens_total"] for s in ss)
        # CPU milliseconds per generated token, per process group (summed over rounds).
        row["cpu_ms_per_token"] = {
            g: round(1000 * sum(s["cpu_s"].get(g, 0.0) for s in ss) / tokens, 3) for g in cpu_groups if tokens
        }
        chunks = sum(s["chunks_per_request_mean"] * s["ok"] for s in ss if s["ok"])
        row["cpu_ms_per_chunk"] = {
            g: round(1000 * sum(s["cpu_s"].get(g, 0.0) for s in ss) / chunks, 3) for g in cpu_groups if chunks
        }
        table.setdefault(target, {})[load] = row
    return table


PLATFORMS = ("platform", "platform-si", "platform-paced", "platform-tp")
ALL_TARGETS = (*PLATFORMS, "engine", "naive")
DEFAULT_TARGETS = {"full": "platform,platform-si,platform-paced,engine,naive", "quick": "platform,engine,naive"}
#: Serve application name of each platform target.
APP_NAMES = {name: APP_NAME if name == "platform" else f"{APP_NAME}-{name.split('-', 1)[1]}" for name in PLATFORMS}


def _load_order(k: str):
    return (k.startswith("rate"), float(k.lstrip("crate")))


def ratios_for(steps: list[dict[str, Any]], platform: str, goal_concurrency: int) -> dict[str, Any]:
    """Per load and round: `platform` vs engine and vs naive (same round, same load); medians over rounds."""
    idx = {(s["target"], load_key(s), s["round"]): s for s in steps}
    loads = {(load_key(s), s["round"]) for s in steps if s["target"] == platform}
    out: dict[str, Any] = {}
    for load in sorted({k for k, _ in loads}, key=_load_order):
        per_round = []
        for r in sorted({r for k, r in loads if k == load}):
            p, e, n = (idx.get((t, load, r)) for t in (platform, "engine", "naive"))
            x: dict[str, Any] = {}
            if e is not None and p["ok"] and e["ok"]:
                x["over_engine_tokens_per_s"] = p["output_tokens_per_s"] / e["output_tokens_per_s"]
                x["over_engine_requests_per_s"] = p["requests_per_s"] / e["requests_per_s"]
                for q in ("p50", "p99"):
                    x[f"added_ttft_{q}_ms"] = p["ttft_ms"][q] - e["ttft_ms"][q]
                    if p["itl_ms"][q] is not None and e["itl_ms"][q] is not None:
                        x[f"added_itl_{q}_ms"] = p["itl_ms"][q] - e["itl_ms"][q]
                    x[f"added_e2e_{q}_ms"] = p["e2e_ms"][q] - e["e2e_ms"][q]
            if n is not None and n["output_tokens_per_s"]:
                x["over_naive_tokens_per_s"] = p["output_tokens_per_s"] / n["output_tokens_per_s"]
            per_round.append(x)
        keys = sorted({k for x in per_round for k in x})
        out[load] = {k: _med([x.get(k) for x in per_round]) for k in keys}
        out[load]["rounds"] = len(per_round)
    table = aggregate(steps)
    peak = {
        t: max((row["output_tokens_per_s"] for row in table.get(t, {}).values() if row["mode"] == "closed"),
               default=None)
        for t in (platform, "engine", "naive")
    }
    out["peak_tokens_per_s"] = peak
    if peak[platform] and peak["naive"]:
        out["peak_over_peak_naive"] = round(peak[platform] / peak["naive"], 2)
    goal = out.get(f"c{goal_concurrency}", {})
    out["goals"] = {
        "at_concurrency": goal_concurrency,
        "over_engine_tokens_per_s": {"goal": ">= 0.9", "measured": goal.get("over_engine_tokens_per_s"),
                                     "met": _ge(goal.get("over_engine_tokens_per_s"), 0.9)},
        "added_ttft_p50_ms": {"goal": "<= 5", "measured": goal.get("added_ttft_p50_ms"),
                              "met": _le(goal.get("added_ttft_p50_ms"), 5.0)},
        "over_naive_tokens_per_s": {"goal": ">= 10", "measured": goal.get("over_naive_tokens_per_s"),
                                    "met": _ge(goal.get("over_naive_tokens_per_s"), 10.0)},
    }
    return out


def ratios(steps: list[dict[str, Any]], goal_concurrency: int) -> dict[str, Any]:
    present = {s["target"] for s in steps}
    return {p: ratios_for(steps, p, goal_concurrency) for p in PLATFORMS if p in present}


def _ge(x, y):
    return None if x is None else x >= y


def _le(x, y):
    return None if x is None else x <= y


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = results["table"]
    colors = {"platform": "#1f77b4", "platform-si": "#17becf", "platform-paced": "#ff7f0e", "platform-tp": "#9467bd",
              "engine": "#2ca02c", "naive": "#d62728"}
    panels = [
        ("output_tokens_per_s", None, "output tokens/s (higher is better)", False),
        ("ttft_p50_ms", "ttft_p99_ms", "time to first token, ms (p50 solid, p99 dashed)", True),
        ("itl_p50_ms", "itl_p99_ms", "inter-token latency, ms (p50 solid, p99 dashed)", True),
        ("e2e_p50_ms", "e2e_p99_ms", "end-to-end latency, ms (p50 solid, p99 dashed)", True),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.3))
    for ax, (key, key99, title, logy) in zip(axes, panels):
        for target, rows in table.items():
            pts = sorted((row["concurrency"], row) for row in rows.values() if row["mode"] == "closed")
            xs = [c for c, _ in pts]
            ys = [row[key] for _, row in pts]
            if all(y is None for y in ys):
                continue
            ax.plot(xs, ys, "o-", color=colors.get(target), label=target)
            if key99:
                ax.plot(xs, [row[key99] for _, row in pts], "o--", color=colors.get(target), alpha=0.6)
        ax.set_xscale("log", base=2)
        ax.set_xticks(results["sizes"]["concurrency"], [str(c) for c in results["sizes"]["concurrency"]])
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("concurrency (closed loop)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    m = results["machine"]
    fig.suptitle(
        f"gemma-serving, tiny Gemma 3 text, {results['sizes']['max_tokens']} new tokens, greedy; "
        f"{m['cpu_count']} cores, profile {results['profile']}, engine {results['engine']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def print_table(results: dict[str, Any]) -> None:
    table = results["table"]
    loads = sorted({k for rows in table.values() for k in rows}, key=_load_order)
    print(f"\n{'load':>8} {'target':>11} {'tok/s':>8} {'req/s':>7} {'ttft p50':>9} {'ttft p99':>9} {'itl p50':>8} "
          f"{'e2e p50':>9} {'e2e p99':>9} {'tok/req':>7} {'chunks':>7} errors")
    for load in loads:
        for target in ALL_TARGETS:
            row = table.get(target, {}).get(load)
            if not row:
                continue
            f = lambda v: "-" if v is None else f"{v:g}"
            print(f"{load:>8} {target:>11} {f(row['output_tokens_per_s']):>8} {f(row['requests_per_s']):>7} "
                  f"{f(row['ttft_p50_ms']):>9} {f(row['ttft_p99_ms']):>9} {f(row['itl_p50_ms']):>8} "
                  f"{f(row['e2e_p50_ms']):>9} {f(row['e2e_p99_ms']):>9} {f(row['output_tokens_mean']):>7} "
                  f"{f(row['chunks_per_request_mean']):>7} {row['errors'] or ''}")
    for platform, r in results["ratios"].items():
        print(f"\n{platform} ratios (median over rounds):")
        for load, x in r.items():
            print(f"  {load}: {x}")


# --------------------------------------------------------------------------------------------------------------


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

    import grpc
    import psutil
    import ray
    from procstats import ProcessGroups

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Subprocess logs (vLLM, transformers) stay out of bench/results.
    logdir = Path(tempfile.mkdtemp(prefix="serving_bench_logs_"))
    machine = {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": pyplatform.python_version(),
        "platform": pyplatform.platform(),
        "ray": ray.__version__,
        "grpcio": grpc.__version__,
        "vllm": _version("vllm"),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
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
        "notes": [
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
        ],
    }
    try:
        t = now()
        if any(p in wanted for p in PLATFORMS) or not args.skip_router_overhead:
            from router_overhead import start_ray

            try:
                start_ray(num_gpus=profile["num_gpus"], worker_niceness=niceness)
            except Exception as exc:  # noqa: BLE001 - e.g. "The current node timed out during startup" when busy
                progress(f"ray did not start ({exc}); retrying once")
                ray.shutdown()
                start_ray(num_gpus=profile["num_gpus"], worker_niceness=niceness)
            startup["ray_and_serve_s"] = round(now() - t, 1)
            progress(f"ray + serve up in {startup['ray_and_serve_s']} s")
        # The subprocess targets load while the platform starts (after Ray: Ray gives its raylet only 30 s to come
        # up, which a busy 2-core machine can miss).
        if "engine" in wanted:
            spec = {"engine": profile["engine"], "model": model_cfg, "device": profile["device"],
                    "prompts": len(prompts), "sampling": sampling.__dict__}
            subs["engine"] = Subprocess(
                "engine", [sys.executable, __file__, "--engine-worker", json.dumps(spec)], logdir / "engine_worker.log"
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
                                               "stream_interval": args.stream_interval}
            config = platform_config(cfg, profile, APP_NAMES[name])
            port = start_platform(config, profile["engine"], SERVE_TP_ENV if name == "platform-tp" else None,
                                  paced=name == "platform-paced")
            configs.append(config)
            startup[f"{name}_app_s"] = round(now() - t, 1)
            progress(f"{name} up in {startup[f'{name}_app_s']} s (router on 127.0.0.1:{port})")
            targets[name] = LocalGrpcTarget(
                GrpcTarget(f"127.0.0.1:{port}", model_cfg["name"], name=name), prompts, sampling
            )
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

        async def run_all() -> list[dict[str, Any]]:
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

        steps = asyncio.run(run_all())
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

    results["wall_s"] = round(now() - _T0, 1)
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    print_table(results)
    progress(f"wrote {out} and {out.with_suffix('.png')}")


def _version(dist: str) -> str | None:
    from importlib import metadata

    for name in (dist, f"{dist}-cpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return pyplatform.processor()


if __name__ == "__main__":
    main()

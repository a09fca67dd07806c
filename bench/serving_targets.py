"""The serving benchmark's targets: model and engine settings shared by every target, the engine worker (the engine
in-process, in a subprocess driven over stdin/stdout), subprocess management, and the platform (Ray Serve app) start.

Importing this module sets up the environment the targets need: services/ and bench/ on the path (bench/ for the Ray
workers too), Ray usage stats off, vLLM logging at WARNING, no tokenizers parallelism.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench_common import BENCH_DIR, share_on_path

sys.path.insert(0, str(BENCH_DIR.parent / "services"))
# Ray workers (replicas) must import bench modules (engine factories) by name: put bench/ on their path.
share_on_path(BENCH_DIR)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from loadgen import EngineTarget, GrpcTarget, SamplingSpec, make_prompts, run_closed, run_poisson, summarize

APP_NAME = "bench"
MARK = "@@BENCH "

PROFILES: dict[str, dict[str, Any]] = {
    # This machine and CI: vLLM's CPU build on the tiny text model, fp32 as in configs/local.yaml.
    "cpu": {"engine": "vllm", "device": "cpu", "dtype": "float32", "num_gpus": 0, "replica_gpus": 0},
    # A lent accelerator without vLLM: bench/transformers_engine.py (batched HF generate) on CUDA, bf16. All
    # targets share the one GPU (one measured at a time): each platform replica takes a quarter of it in Ray.
    "gpu": {"engine": "transformers", "device": "cuda", "dtype": "bfloat16", "num_gpus": 1, "replica_gpus": 0.25},
}

PLATFORMS = ("platform", "platform-si", "platform-paced", "platform-tp")
ALL_TARGETS = (*PLATFORMS, "engine", "naive")
DEFAULT_TARGETS = {"full": "platform,platform-si,platform-paced,engine,naive", "quick": "platform,engine,naive"}
#: Serve application name of each platform target.
APP_NAMES = {name: APP_NAME if name == "platform" else f"{APP_NAME}-{name.split('-', 1)[1]}" for name in PLATFORMS}


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

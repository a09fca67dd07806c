"""Soak test: many concurrent streaming clients against the platform for a while; nothing unexpected, nothing leaked.

Run from the repository root (not part of `make test`; about 4-5 minutes on a 2-core machine with the defaults,
most of it starting Ray and the three vLLM engines):

    .venv/bin/python bench/soak.py                                   # 64 clients, 60 s, starts its own platform
    .venv/bin/python bench/soak.py --clients 16 --seconds 20 --mix 1:0:0 --max-tokens 8
    .venv/bin/python bench/soak.py --target 127.0.0.1:50051          # an already-running platform (`gemma-serving up`)
    .venv/bin/python bench/soak.py --target 127.0.0.1:50051 --ray-address auto   # ... with the leak check

By default the script starts the platform in this process the way tests/integration/conftest.py does (ray.init +
serve.start + serve.run(build_app(config)) with the router on a free port; metrics on a free port too, so it can run
beside another platform on the same box). Each client is a grpc.aio channel running GenerateStream calls back to back
(text, image+text or audio+text, drawn by --mix) until --seconds have passed; calls in flight then finish.

Report (printed as a table, written as JSON to --out, default bench/results/soak.json): requests by status code (all
and per service), end-to-end latency and time to first chunk (p50/p99, OK calls), completion tokens/s, requests/s,
progress every 10 s. Then it asserts that no call ended with anything but OK or RESOURCE_EXHAUSTED (overload refusal)
and that no engine request is left behind (`describe()["in_flight"] == 0` on every service, polled for a few
seconds); with --target the leak check needs Ray (--ray-address) and is skipped otherwise. Exit status 1 when an
assertion fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform as host_platform
import random
import socket
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Serve's proxies bind with SO_REUSEPORT by default: another cluster on this box could silently share our port.
os.environ.setdefault("SERVE_SOCKET_REUSE_PORT_ENABLED", "0")

import grpc
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.client import audio_part, image_part, message
from gemma_serving.client.samples import sample_png, sample_wav
from gemma_serving.config import ServingConfig, load_config, parse_config

KINDS = ("text", "vision", "audio")
ALLOWED = {"OK", "RESOURCE_EXHAUSTED"}
PROMPTS = ["Tell me a story about a lighthouse.", "List three prime numbers.", "Explain gRPC in one paragraph.",
           "Write a haiku about the sea.", "What is the capital of France?", "Summarize the plot of Hamlet."]


@dataclass
class Call:
    kind: str
    code: str
    began: float  # seconds since the soak started
    seconds: float  # end to end
    first_chunk_s: float | None  # time to the first GenerateChunk
    chunks: int
    completion_tokens: int
    prompt_tokens: int
    finish_reason: str
    details: str = ""


def parse_mix(text: str) -> dict[str, float]:
    """'6:2:2' or 'text=6,vision=2,audio=2' -> weights per service."""
    if "=" in text:
        pairs = dict(item.split("=", 1) for item in text.split(","))
        weights = {k: float(pairs.get(k, 0)) for k in KINDS}
        unknown = set(pairs) - set(KINDS)
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown services in --mix: {sorted(unknown)}")
    else:
        parts = [float(x) for x in text.split(":")]
        if len(parts) != 3:
            raise argparse.ArgumentTypeError("--mix needs three ratios text:vision:audio, e.g. 6:2:2")
        weights = dict(zip(KINDS, parts))
    if any(w < 0 for w in weights.values()) or not sum(weights.values()):
        raise argparse.ArgumentTypeError("--mix ratios must be >= 0 and not all 0")
    return weights


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# ---------------------------------------------------------------------------------------------------------------
# The platform: started here (like tests/integration/conftest.py) or reached at --target.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def soak_config(path: str | None) -> ServingConfig:
    """The config with every listening port (gRPC, HTTP, metrics, ...) set to 0 = a free one: another platform on
    this box may hold the defaults."""

    def free_ports(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("port") and isinstance(value, int) and not isinstance(value, bool):
                    node[key] = 0
                else:
                    free_ports(value)
        elif isinstance(node, list):
            for item in node:
                free_ports(item)

    data = load_config(path).model_dump(mode="json")
    free_ports(data)
    return parse_config(data)


def start_platform(config: ServingConfig) -> tuple[str, float]:
    import ray
    from gemma_serving.app import build_app
    from gemma_serving.models import build_models
    from ray import serve

    began = time.monotonic()
    build_models(progress=lambda msg: print(f"[build-models] {msg}", flush=True))
    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})
    print("deploying the app (Ray Serve + 3 vLLM engines; minutes on a small CPU box) ...", flush=True)
    handle = serve.run(build_app(config), name=config.app_name, route_prefix=None)
    port = handle.port.remote().result()
    return f"127.0.0.1:{port}", time.monotonic() - began


def stop_platform() -> None:
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def describe_all(app_name: str) -> dict[str, dict]:
    from ray import serve

    return {kind: serve.get_deployment_handle(kind, app_name).describe.remote().result(timeout_s=30)
            for kind in KINDS}


def leak_check(app_name: str, wait_s: float) -> dict:
    """Poll every service's in-flight engine requests until all are 0 (or `wait_s` passes)."""
    began = time.monotonic()
    while True:
        in_flight = {kind: fact["in_flight"] for kind, fact in describe_all(app_name).items()}
        if not any(in_flight.values()) or time.monotonic() - began > wait_s:
            return {"in_flight": in_flight, "waited_s": round(time.monotonic() - began, 2),
                    "ok": not any(in_flight.values())}
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------------------------
# The load.


def build_requests(config: ServingConfig, max_tokens: int) -> dict[str, list[pb.GenerateRequest]]:
    """A few requests per service, made once (media encoded once, as a client with fixed inputs would)."""
    png, wav = sample_png(), sample_wav(seconds=1.0)
    model = {kind.value: s.model.name for kind, s in config.services.items()}
    out: dict[str, list[pb.GenerateRequest]] = {}
    for kind in KINDS:
        out[kind] = []
        for i, prompt in enumerate(PROMPTS):
            parts = {"text": [prompt], "vision": [image_part(png, "image/png"), prompt],
                     "audio": [audio_part(wav, "audio/wav"), prompt]}[kind]
            sampling = pb.SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=1000 + i)
            out[kind].append(pb.GenerateRequest(model=model.get(kind, kind), messages=[message(*parts)],
                                                sampling=sampling))
    return out


async def one_call(stub, kind: str, request: pb.GenerateRequest, t0: float, timeout_s: float) -> Call:
    began = time.monotonic()
    first = None
    chunks = completion = prompt = 0
    finish = "FINISH_REASON_UNSPECIFIED"
    code, details = "OK", ""
    try:
        async for chunk in stub.GenerateStream(request, timeout=timeout_s):
            if first is None:
                first = time.monotonic() - began
            chunks += 1
            if chunk.finish_reason:
                finish = pb.FinishReason.Name(chunk.finish_reason)
                completion, prompt = chunk.usage.completion_tokens, chunk.usage.prompt_tokens
        if finish not in ("FINISH_REASON_STOP", "FINISH_REASON_LENGTH"):
            code, details = "BAD_STREAM", f"stream ended with {finish} after {chunks} chunks"
    except grpc.aio.AioRpcError as err:
        code, details = err.code().name, (err.details() or "")[:300]
    return Call(kind, code, began - t0, time.monotonic() - began, first, chunks, completion, prompt, finish, details)


async def run_load(target: str, requests: dict[str, list[pb.GenerateRequest]], args) -> tuple[list[Call], dict]:
    weights = args.mix
    kinds = [k for k in KINDS if weights[k] > 0]
    calls: list[Call] = []
    in_flight = 0
    t0 = time.monotonic()
    stop_at = t0 + args.seconds
    progress: list[dict] = []

    async def client(i: int) -> None:
        nonlocal in_flight
        rng = random.Random(args.seed * 1000 + i)
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.InferenceStub(channel)
            while time.monotonic() < stop_at:
                kind = rng.choices(kinds, [weights[k] for k in kinds])[0]
                request = rng.choice(requests[kind])
                in_flight += 1
                try:
                    result = await one_call(stub, kind, request, t0, args.request_timeout)
                finally:
                    in_flight -= 1
                calls.append(result)
                if result.code == "RESOURCE_EXHAUSTED":
                    await asyncio.sleep(0.2 + rng.random() * 0.3)  # back off as a retry-after client would

    async def report_progress() -> None:
        last_n, last_tokens, last_t = 0, 0, t0
        while True:
            await asyncio.sleep(args.progress_every)
            now = time.monotonic()
            tokens = sum(c.completion_tokens for c in calls)
            codes = Counter(c.code for c in calls)
            line = {"t_s": round(now - t0, 1), "done": len(calls), "in_flight": in_flight, "codes": dict(codes),
                    "req_per_s": round((len(calls) - last_n) / (now - last_t), 2),
                    "tokens_per_s": round((tokens - last_tokens) / (now - last_t), 1)}
            progress.append(line)
            print(f"[{line['t_s']:6.1f} s] done {line['done']:5d}  in flight {in_flight:3d}  "
                  f"{line['req_per_s']:6.2f} req/s  {line['tokens_per_s']:7.1f} tok/s  codes {dict(codes)}",
                  flush=True)
            last_n, last_tokens, last_t = len(calls), tokens, now

    reporter = asyncio.create_task(report_progress())
    try:
        await asyncio.gather(*(client(i) for i in range(args.clients)))
    finally:
        reporter.cancel()
    wall = time.monotonic() - t0
    return calls, {"wall_s": round(wall, 2), "progress": progress}


# ---------------------------------------------------------------------------------------------------------------
# Summary.


def summarize(calls: list[Call], wall_s: float) -> dict:
    def stats(subset: list[Call]) -> dict:
        ok = [c for c in subset if c.code == "OK"]
        e2e = [c.seconds for c in ok]
        ttfc = [c.first_chunk_s for c in ok if c.first_chunk_s is not None]
        tokens = sum(c.completion_tokens for c in ok)
        return {
            "requests": len(subset),
            "codes": dict(Counter(c.code for c in subset).most_common()),
            "ok": len(ok),
            "e2e_p50_s": _r(percentile(e2e, 50)), "e2e_p99_s": _r(percentile(e2e, 99)),
            "e2e_mean_s": _r(statistics.fmean(e2e) if e2e else None),
            "ttfc_p50_s": _r(percentile(ttfc, 50)), "ttfc_p99_s": _r(percentile(ttfc, 99)),
            "completion_tokens": tokens,
            "tokens_per_s": round(tokens / wall_s, 1) if wall_s else None,
            "requests_per_s": round(len(ok) / wall_s, 2) if wall_s else None,
            "finish_reasons": dict(Counter(c.finish_reason for c in ok)),
        }

    by_kind = defaultdict(list)
    for c in calls:
        by_kind[c.kind].append(c)
    unexpected = [c for c in calls if c.code not in ALLOWED]
    return {
        "all": stats(calls),
        "by_service": {k: stats(v) for k, v in sorted(by_kind.items())},
        "unexpected": len(unexpected),
        "unexpected_samples": [asdict(c) for c in unexpected[:10]],
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def print_table(report: dict) -> None:
    rows = [("all", report["summary"]["all"])] + list(report["summary"]["by_service"].items())
    head = (f"{'service':<8} {'requests':>8} {'OK':>6} {'RES_EXH':>7} {'other':>6} {'e2e p50':>8} {'e2e p99':>8} "
            f"{'ttfc p50':>8} {'ttfc p99':>8} {'tok/s':>8} {'req/s':>7}")
    print("\n" + head)
    print("-" * len(head))
    for name, s in rows:
        other = s["requests"] - s["ok"] - s["codes"].get("RESOURCE_EXHAUSTED", 0)
        print(f"{name:<8} {s['requests']:>8} {s['ok']:>6} {s['codes'].get('RESOURCE_EXHAUSTED', 0):>7} "
              f"{other:>6} {_fmt(s['e2e_p50_s'])} {_fmt(s['e2e_p99_s'])} {_fmt(s['ttfc_p50_s'])} "
              f"{_fmt(s['ttfc_p99_s'])} {s['tokens_per_s'] or 0:>8.1f} {s['requests_per_s'] or 0:>7.2f}")
    print(f"\nstatus codes: {report['summary']['all']['codes']}; wall {report['load']['wall_s']} s; "
          f"load average before/after {report['host']['loadavg_before'][0]:.1f}/{report['host']['loadavg_after'][0]:.1f}; "
          f"router health after: {'SERVING' if report['router_serving_after'] else 'NOT SERVING'}")
    leak = report["leak_check"]
    print(f"leaked engine requests: {leak.get('in_flight', 'not checked: ' + leak.get('skipped', ''))}")
    for check in report["checks"]:
        print(f"{'PASS' if check['ok'] else 'FAIL'}  {check['name']}: {check['detail']}")


def _fmt(x: float | None) -> str:
    return f"{'-':>8}" if x is None else f"{x:>7.3f}s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent streaming clients (default 64)")
    parser.add_argument("--seconds", type=float, default=60, help="how long new calls start (default 60)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens per call (default 32)")
    parser.add_argument("--mix", type=parse_mix, default=parse_mix("6:2:2"),
                        help="text:vision:audio ratio, e.g. 6:2:2 (default) or text=1,vision=0,audio=0")
    parser.add_argument("--target", help="host:port of a running platform; default: start one in this process")
    parser.add_argument("--ray-address", help="with --target: Ray cluster address for the leak check (e.g. auto)")
    parser.add_argument("--config", help="platform config YAML (default: the local tiny-model config)")
    parser.add_argument("--request-timeout", type=float, default=120, help="deadline per call in seconds")
    parser.add_argument("--progress-every", type=float, default=10, help="progress line interval in seconds")
    parser.add_argument("--leak-wait", type=float, default=10, help="seconds to wait for in-flight to reach 0")
    parser.add_argument("--ready-timeout", type=float, default=600, help="seconds to wait for router health SERVING")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/soak.json")
    args = parser.parse_args(argv)

    config = soak_config(args.config)
    started_here = args.target is None
    report: dict = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": {k: v for k, v in vars(args).items()},
        "host": {"cpus": os.cpu_count(), "platform": host_platform.platform(), "python": sys.version.split()[0],
                 "loadavg_before": os.getloadavg()},
    }
    ray_ready = False
    try:
        if started_here:
            ray_ready = True  # from here on this process owns a Ray instance (stopped in `finally`)
            target, startup_s = start_platform(config)
            report["platform"] = {"started_here": True, "target": target, "startup_s": round(startup_s, 1)}
            print(f"platform up on {target} after {startup_s:.0f} s", flush=True)
        else:
            target = args.target
            report["platform"] = {"started_here": False, "target": target}
            if args.ray_address:
                import ray

                ray.init(address=args.ray_address, namespace="serve", logging_level="WARNING")
                ray_ready = True
        from gemma_serving.local import router_serving

        waited = time.monotonic()
        while not router_serving(target, timeout_s=10):  # it turns SERVING once every service answered a probe
            if time.monotonic() - waited > args.ready_timeout:
                print(f"router at {target} is not SERVING after {args.ready_timeout:.0f} s", file=sys.stderr)
                return 1
            time.sleep(2)
        report["platform"]["serving_after_s"] = round(time.monotonic() - waited, 1)
        requests = build_requests(config, args.max_tokens)
        print(f"soak: {args.clients} streaming clients for {args.seconds:.0f} s against {target}, "
              f"mix {args.mix}, max_tokens {args.max_tokens}", flush=True)
        calls, load = asyncio.run(run_load(target, requests, args))
        report["load"] = load
        report["summary"] = summarize(calls, load["wall_s"])
        report["router_serving_after"] = router_serving(target, timeout_s=10)
        if ray_ready:
            report["leak_check"] = leak_check(config.app_name, args.leak_wait)
        else:
            report["leak_check"] = {"skipped": "no Ray connection (pass --ray-address with --target)"}
        report["host"]["loadavg_after"] = os.getloadavg()
        s = report["summary"]
        checks = [{"name": "only OK and RESOURCE_EXHAUSTED", "ok": s["unexpected"] == 0,
                   "detail": f"{s['unexpected']} unexpected of {s['all']['requests']} calls"
                             + (f"; e.g. {s['unexpected_samples'][0]['code']}: "
                                f"{s['unexpected_samples'][0]['details']!r}" if s["unexpected_samples"] else "")},
                  {"name": "some calls succeeded", "ok": s["all"]["ok"] > 0, "detail": f"{s['all']['ok']} OK"}]
        if "in_flight" in report["leak_check"]:
            leak = report["leak_check"]
            checks.append({"name": "no leaked engine requests", "ok": leak["ok"],
                           "detail": f"in_flight {leak['in_flight']} after {leak['waited_s']} s"})
        report["checks"] = checks
        report["passed"] = all(c["ok"] for c in checks)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    finally:
        if started_here and ray_ready:
            stop_platform()
    print_table(report)  # after the platform's shutdown logs
    print(f"\nreport written to {out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

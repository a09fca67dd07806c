"""Soak test: many concurrent streaming clients on both surfaces, as several tenants, against the platform for a
while; nothing unexpected, nothing leaked, the router's memory flat.

Run from the repository root (not part of `make test`; about 4-5 minutes on a 2-core machine with the defaults,
most of it starting Ray and the three vLLM engines):

    .venv/bin/python bench/soak.py                        # 64 clients (half gRPC, half OpenAI HTTP), 3 tenants, 60 s
    .venv/bin/python bench/soak.py --clients 16 --seconds 20 --mix 1:0:0 --max-tokens 8 --surface openai
    .venv/bin/python bench/soak.py --tenants 0            # auth off: every caller is tenant 'default'
    .venv/bin/python bench/soak.py --target 127.0.0.1:50051 --http-target 127.0.0.1:8088   # a running platform
    .venv/bin/python bench/soak.py --target 127.0.0.1:50051 --surface grpc --ray-address auto --api-key "$KEY"

By default the script starts the platform in this process the way tests/integration/conftest.py does (ray.init +
serve.start + serve.run(build_app(config))) with every port free (gRPC, HTTP, metrics: it can run beside another
platform on the same box; the HTTP port is asked of the router, `http_port()`), and API-key auth on for --tenants
tenants (bench/soak_platform.py: generous quotas, the last tenant with a tight max_concurrent_streams so
RESOURCE_EXHAUSTED is exercised). Clients belong to the tenants round-robin and split over --surface (grpc | openai |
both): a gRPC client is a grpc.aio channel running GenerateStream calls back to back, an OpenAI client an
httpx.AsyncClient streaming POST /v1/chat/completions (bench/soak_clients.py); text, image+text or audio+text, drawn
by --mix, until --seconds have passed; calls in flight then finish. With --target the platform's own tenants apply:
pass their keys with --api-key (one tenant per key).

Report (printed as a table, written as JSON to --out, default bench/results/soak.json): requests by status code (all,
per service, per surface, per tenant), end-to-end latency and time to first chunk (p50/p99, OK calls), completion
tokens/s, requests/s, progress every 10 s, and `router_rss_mib` {start, after_warmup, end, max, samples} of the
router's replica process (bench/soak_memory.py). Asserted (exit status 1 when one fails):
  - no call ended with anything but OK or RESOURCE_EXHAUSTED (overload or quota refusal; HTTP 429);
  - some calls succeeded on every surface used;
  - the tight tenant was refused at least once (when it has two or more clients);
  - no engine request is left behind (`describe()["in_flight"] == 0` on every service, polled for a few seconds);
  - router memory flat: end RSS <= after-warm-up RSS (10 s into the load) x 1.10 + 32 MiB.
The last two need Ray: with --target, pass --ray-address (and, for memory, run on the router's host); otherwise they
are reported as skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform as host_platform
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Serve's proxies bind with SO_REUSEPORT by default: another cluster on this box could silently share our port.
os.environ.setdefault("SERVE_SOCKET_REUSE_PORT_ENABLED", "0")

from soak_clients import SURFACES, Call, LoadSettings, build_requests, plan_clients, run_load
from soak_memory import RouterMemory
from soak_platform import KINDS, external_tenants, leak_check, make_tenants, soak_config, start_platform, stop_platform

ALLOWED = {"OK", "RESOURCE_EXHAUSTED"}
GROUPS = {"service": "kind", "surface": "surface", "tenant": "tenant"}


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

    def by(attribute: str) -> dict:
        groups = defaultdict(list)
        for c in calls:
            groups[getattr(c, attribute)].append(c)
        return {name: stats(subset) for name, subset in sorted(groups.items())}

    unexpected = [c for c in calls if c.code not in ALLOWED]
    return {
        "all": stats(calls),
        **{f"by_{group}": by(attribute) for group, attribute in GROUPS.items()},
        "unexpected": len(unexpected),
        "unexpected_samples": [asdict(c) for c in unexpected[:10]],
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def checks_of(report: dict, surfaces: tuple[str, ...], tight: tuple[str, int] | None,
              memory: RouterMemory) -> list[dict]:
    """The assertions of the module docstring; `tight`: the tight tenant's id and number of clients."""
    s = report["summary"]
    sample = s["unexpected_samples"][0] if s["unexpected_samples"] else None
    ok_by_surface = {name: s["by_surface"].get(name, {}).get("ok", 0) for name in surfaces}
    checks = [{"name": "only OK and RESOURCE_EXHAUSTED", "ok": s["unexpected"] == 0,
               "detail": f"{s['unexpected']} unexpected of {s['all']['requests']} calls"
                         + (f"; e.g. {sample['surface']} {sample['code']}: {sample['details']!r}" if sample else "")},
              {"name": "some calls succeeded on every surface", "ok": all(ok_by_surface.values()),
               "detail": f"OK by surface {ok_by_surface}"}]
    if tight is not None and tight[1] >= 2:
        refused = s["by_tenant"].get(tight[0], {}).get("codes", {}).get("RESOURCE_EXHAUSTED", 0)
        checks.append({"name": "tight tenant refused", "ok": refused > 0,
                       "detail": f"{tight[0]} ({tight[1]} clients) got RESOURCE_EXHAUSTED {refused} times"})
    leak = report["leak_check"]
    checks.append({"name": "no leaked engine requests", "skipped": True, "ok": True, "detail": leak["skipped"]}
                  if "skipped" in leak else
                  {"name": "no leaked engine requests", "ok": leak["ok"],
                   "detail": f"in_flight {leak['in_flight']} after {leak['waited_s']} s"})
    checks.append(memory.check())
    return checks


def print_table(report: dict) -> None:
    summary = report["summary"]
    rows = [("all", summary["all"])] + [(f"{group} {name}", s) for group in GROUPS
                                        for name, s in summary[f"by_{group}"].items()]
    head = (f"{'':<20} {'requests':>8} {'OK':>6} {'RES_EXH':>7} {'other':>6} {'e2e p50':>8} {'e2e p99':>8} "
            f"{'ttfc p50':>8} {'ttfc p99':>8} {'tok/s':>8} {'req/s':>7}")
    print("\n" + head)
    print("-" * len(head))
    for name, s in rows:
        other = s["requests"] - s["ok"] - s["codes"].get("RESOURCE_EXHAUSTED", 0)
        print(f"{name:<20} {s['requests']:>8} {s['ok']:>6} {s['codes'].get('RESOURCE_EXHAUSTED', 0):>7} "
              f"{other:>6} {_fmt(s['e2e_p50_s'])} {_fmt(s['e2e_p99_s'])} {_fmt(s['ttfc_p50_s'])} "
              f"{_fmt(s['ttfc_p99_s'])} {s['tokens_per_s'] or 0:>8.1f} {s['requests_per_s'] or 0:>7.2f}")
    loadavg = f"{report['host']['loadavg_before'][0]:.1f}/{report['host']['loadavg_after'][0]:.1f}"
    print(f"\nstatus codes: {summary['all']['codes']}; wall {report['load']['wall_s']} s; "
          f"load average before/after {loadavg}; "
          f"router health after: {'SERVING' if report['router_serving_after'] else 'NOT SERVING'}")
    rss = report["router_rss_mib"]
    print(f"router RSS (MiB): {rss.get('skipped') or {k: rss[k] for k in ('start', 'after_warmup', 'end', 'max')}}")
    for check in report["checks"]:
        verdict = "SKIP" if check.get("skipped") else "PASS" if check["ok"] else "FAIL"
        print(f"{verdict}  {check['name']}: {check['detail']}")


def _fmt(x: float | None) -> str:
    return f"{'-':>8}" if x is None else f"{x:>7.3f}s"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent streaming clients (default 64)")
    parser.add_argument("--seconds", type=float, default=60, help="how long new calls start (default 60)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens per call (default 32)")
    parser.add_argument("--mix", type=parse_mix, default=parse_mix("6:2:2"),
                        help="text:vision:audio ratio, e.g. 6:2:2 (default) or text=1,vision=0,audio=0")
    parser.add_argument("--surface", choices=("grpc", "openai", "both"), default="both",
                        help="which surface the clients use; both: half each (default)")
    parser.add_argument("--tenants", type=int, default=3,
                        help="API-key tenants of the platform started here (default 3; 0: auth off)")
    parser.add_argument("--target", help="host:port of a running platform's gRPC port; default: start one here")
    parser.add_argument("--http-target", help="with --target: host:port of its OpenAI HTTP port")
    parser.add_argument("--api-key", action="append", default=[],
                        help="with --target: a tenant's API key (repeat for several tenants)")
    parser.add_argument("--ray-address", help="with --target: Ray address for the leak and memory checks (auto)")
    parser.add_argument("--config", help="platform config YAML (default: the local tiny-model config)")
    parser.add_argument("--request-timeout", type=float, default=120, help="deadline per call in seconds")
    parser.add_argument("--progress-every", type=float, default=10, help="progress line interval in seconds")
    parser.add_argument("--warmup-seconds", type=float, default=10,
                        help="load time before the after-warm-up RSS sample (default 10)")
    parser.add_argument("--leak-wait", type=float, default=10, help="seconds to wait for in-flight to reach 0")
    parser.add_argument("--ready-timeout", type=float, default=600, help="seconds to wait for router health SERVING")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/soak.json")
    args = parser.parse_args(argv)
    args.surfaces = SURFACES if args.surface == "both" else (args.surface,)
    if args.target and "openai" in args.surfaces and not args.http_target:
        parser.error("--target with the OpenAI surface needs --http-target (or --surface grpc)")
    if args.tenants < 0:
        parser.error("--tenants must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_here = args.target is None
    tenants = make_tenants(args.tenants, args.clients) if started_here else external_tenants(args.api_key)
    config = soak_config(args.config, tenants)
    clients = plan_clients(args.clients, args.surfaces, tenants)
    per_tenant = Counter(c.tenant.id for c in clients)
    tight = next(((t.id, per_tenant[t.id]) for t in tenants if t.max_concurrent_streams), None)
    report: dict = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": {k: v for k, v in vars(args).items() if k != "api_key"} | {"api_keys": len(args.api_key)},
        "host": {"cpus": os.cpu_count(), "platform": host_platform.platform(), "python": sys.version.split()[0],
                 "loadavg_before": os.getloadavg()},
        "tenants": [t.describe() | {"clients": per_tenant[t.id]} for t in tenants],
    }
    ray_ready = False
    try:
        if started_here:
            ray_ready = True  # from here on this process owns a Ray instance (stopped in `finally`)
            port, http_port, startup_s = start_platform(config)
            target, http_target = f"127.0.0.1:{port}", http_port and f"127.0.0.1:{http_port}"
            report["platform"] = {"started_here": True, "target": target, "http_target": http_target,
                                  "startup_s": round(startup_s, 1)}
            print(f"platform up on {target} (HTTP {http_target}) after {startup_s:.0f} s", flush=True)
            if "openai" in args.surfaces and not http_port:
                print("the config disables the HTTP port (router.http_port: null): use --surface grpc", file=sys.stderr)
                return 1
        else:
            target, http_target = args.target, args.http_target
            report["platform"] = {"started_here": False, "target": target, "http_target": http_target}
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
        memory = (RouterMemory.find(config.app_name) if ray_ready else
                  RouterMemory([], skipped="no Ray connection (pass --ray-address with --target)"))
        models = {kind.value: s.model.name for kind, s in config.services.items()}
        requests = build_requests(models, args.max_tokens)
        print(f"soak: {args.clients} streaming clients ({dict(Counter(c.surface for c in clients))}) as "
              f"{len(tenants)} tenants for {args.seconds:.0f} s against {target} / {http_target}, mix {args.mix}, "
              f"max_tokens {args.max_tokens}, router pids {memory.pids or memory.skipped}", flush=True)
        settings = LoadSettings(args.seconds, args.mix, args.seed, args.request_timeout, args.progress_every,
                                args.warmup_seconds)
        targets = {"grpc": target, "openai": f"http://{http_target}"}
        calls, load = asyncio.run(run_load(targets, clients, requests, settings, memory))
        memory.sample()
        report["load"] = load
        report["summary"] = summarize(calls, load["wall_s"])
        report["router_serving_after"] = router_serving(target, timeout_s=10)
        report["router_rss_mib"] = memory.report()
        report["leak_check"] = (leak_check(config.app_name, args.leak_wait) if ray_ready else
                                {"skipped": "no Ray connection (pass --ray-address with --target)"})
        report["host"]["loadavg_after"] = os.getloadavg()
        report["checks"] = checks_of(report, args.surfaces, tight, memory)
        report["passed"] = all(c["ok"] for c in report["checks"])
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

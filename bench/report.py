"""Print the README "Performance" tables (markdown) from bench/results/serving.json and router_overhead.json.

    .venv/bin/python bench/report.py [--results bench/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDER = ("platform", "platform-si", "platform-paced", "platform-tp", "engine", "naive")


def _f(v, nd: int = 0) -> str:
    if v is None:
        return "–"
    return f"{v:,.{nd}f}"


def _load_order(k: str):
    return (k.startswith("rate"), float(k.lstrip("crate")))


def serving_tables(r: dict) -> str:
    m = r["machine"]
    lines = [
        (f"Run: {m['cpu_count']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, Python {m['python']}, ray "
         f"{m['ray']}, vLLM {m['vllm']}, torch {m['torch']}; profile `{r['profile']}`, engine `{r['engine']}`; "
         f"{r['sizes']['rounds']} round(s), medians; load average at start / end "
         f"{m['loadavg_at_start'][0]} / {m.get('loadavg_at_end_of_comparison', ['?'])[0]} (a shared machine); "
         f"wall time {r.get('wall_s', '?')} s."),
        "",
        ("| load | target | output tok/s (range over rounds) | req/s | TTFT p50 / p90 / p99 (ms) | ITL p50 / p99 (ms) | "
         "e2e p50 / p99 (ms) | tokens/req | chunks/req | errors |"),
        "|---|---|---:|---:|---|---|---|---:|---:|---|",
    ]
    table = r["table"]
    loads = sorted({k for rows in table.values() for k in rows}, key=_load_order)
    spread: dict[tuple[str, str], list[float]] = {}
    for step in r["steps"]:
        key = f"c{step['concurrency']}" if step["mode"] == "closed" else f"rate{step['rate']:g}"
        spread.setdefault((step["target"], key), []).append(step["output_tokens_per_s"])
    for load in loads:
        label = f"c={load[1:]}" if load.startswith("c") else f"Poisson {load[4:]}/s"
        for t in ORDER:
            row = table.get(t, {}).get(load)
            if not row:
                continue
            errors = ", ".join(f"{k} {v}" for k, v in row["errors"].items()) or "0"
            rounds = spread.get((t, load), [])
            rng = f" ({_f(min(rounds))}–{_f(max(rounds))})" if len(rounds) > 1 else ""
            lines.append(
                f"| {label} | {t} | {_f(row['output_tokens_per_s'])}{rng} | {_f(row['requests_per_s'], 2)} | "
                f"{_f(row['ttft_p50_ms'])} / {_f(row['ttft_p90_ms'])} / {_f(row['ttft_p99_ms'])} | "
                f"{_f(row['itl_p50_ms'], 1)} / {_f(row['itl_p99_ms'], 1)} | "
                f"{_f(row['e2e_p50_ms'])} / {_f(row['e2e_p99_ms'])} | {_f(row['output_tokens_mean'], 1)} | "
                f"{_f(row['chunks_per_request_mean'], 1)} | {errors} |"
            )
    lines += ["", "| ratio (same round, same load; median of rounds) | "
              + " | ".join(k for k in sorted({k for x in r["ratios"].values() for k in x if k.startswith(("c", "rate"))
                                               and k != "rounds"}, key=_load_order)) + " |"]
    loads_r = sorted({k for x in r["ratios"].values() for k in x if k.startswith(("c", "rate"))}, key=_load_order)
    lines.append("|---|" + "---:|" * len(loads_r))
    for platform, x in r["ratios"].items():
        for key, label in (("over_engine_tokens_per_s", "throughput / engine"),
                           ("added_ttft_p50_ms", "added TTFT p50 (ms)"),
                           ("added_ttft_p99_ms", "added TTFT p99 (ms)"),
                           ("added_itl_p50_ms", "added ITL p50 (ms)"),
                           ("over_naive_tokens_per_s", "throughput / naive")):
            cells = []
            for load in loads_r:
                v = x.get(load, {}).get(key)
                cells.append("–" if v is None else (f"{v:.2f}×" if "over" in key else f"{v:+.0f}"))
            lines.append(f"| {platform}: {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for platform, x in r["ratios"].items():
        g = x["goals"]
        lines.append(
            f"- {platform} at c={g['at_concurrency']}: throughput {_ratio(g['over_engine_tokens_per_s'])} of the "
            f"engine (goal ≥ 0.9×), added TTFT p50 {_ms(g['added_ttft_p50_ms'])} (goal ≤ 5 ms), "
            f"{_ratio(g['over_naive_tokens_per_s'])} the naive service (goal ≥ 10×); peak vs peak "
            f"{x.get('peak_over_peak_naive', '–')}× naive."
        )
    return "\n".join(lines)


def _ratio(goal: dict) -> str:
    v = goal["measured"]
    return "–" if v is None else f"{v:.2f}×"


def _ms(goal: dict) -> str:
    v = goal["measured"]
    return "–" if v is None else f"{v:+.0f} ms"


APPS = {"platform": "bench", "platform-si": "bench-si", "platform-paced": "bench-paced", "platform-tp": "bench-tp"}


def cpu_table(r: dict, load: str = "c32") -> str:
    """CPU milliseconds per generated token by process group, for each target, at one load step."""
    lines = [
        (f"CPU time per generated token at {load} (ms, psutil; summed over rounds and divided by the tokens the client "
         "received). `other` is every process this run did not start (other sessions on the machine)."),
        "",
        ("| target | chunks/req | engine processes | router replica | text replica (Serve + AsyncLLM front) | "
         "load generator | Ray system | other |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in ORDER:
        row = r["table"].get(t, {}).get(load)
        if not row:
            continue
        cpu = row["cpu_ms_per_token"]
        if t in APPS:
            app = APPS[t]
            cells = [cpu.get(f"{app}/text/engine"), cpu.get(f"{app}/router"), cpu.get(f"{app}/text"),
                     cpu.get("bench-driver")]
        else:
            own = "engine-baseline" if t == "engine" else "naive-service"
            cells = [cpu.get(own), None, None, cpu.get("bench-driver") if t == "naive" else None]
        cells += [cpu.get("ray-system"), cpu.get("other")]
        lines.append(f"| {t} | {_f(row['chunks_per_request_mean'], 1)} | "
                     + " | ".join("–" if v is None else f"{v:.2f}" for v in cells) + " |")
    return "\n".join(lines)


def overhead_table(ro: dict) -> str:
    keys = sorted(ro["summary"], key=lambda k: (int(k.split("_")[1][6:]), int(k.split("_")[0][1:])))
    lines = [("| request | path | TTFT p50 / p99 (ms) | e2e p50 / p99 (ms) | added e2e p50 / p99 vs direct (ms) | "
              "req/s | chunks/req |"), "|---|---|---|---|---|---:|---:|"]
    for key in keys:
        c, tokens = key.split("_")
        label = f"{tokens[6:]} token(s), c={c[1:]}"
        for path in ("direct", "handle", "router", "platform", "platform-tp"):
            v = ro["summary"][key].get(path)
            if not v:
                continue
            add = ro["added"].get(key, {}).get(path)
            added = "–" if not add else f"{add['e2e_p50_added_ms']:+.1f} / {add['e2e_p99_added_ms']:+.1f}"
            lines.append(
                f"| {label} | {path} | {v['ttft_p50_ms']:.2f} / {v['ttft_p99_ms']:.2f} | "
                f"{v['e2e_p50_ms']:.2f} / {v['e2e_p99_ms']:.2f} | {added} | {_f(v['requests_per_s'])} | "
                f"{_f(v['chunks_per_request'], 1)} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args()
    d = Path(args.results)
    serving = d / "serving.json"
    if serving.exists():
        r = json.loads(serving.read_text())
        print(serving_tables(r))
        print()
        print(cpu_table(r))
        print()
    ro = d / "router_overhead.json"
    if ro.exists():
        print(overhead_table(json.loads(ro.read_text())))


if __name__ == "__main__":
    main()

"""The serving benchmark's output: the PNG (closed-loop ladder per target) and the table printed at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serving_measure import load_order
from serving_targets import ALL_TARGETS


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
    loads = sorted({k for rows in table.values() for k in rows}, key=load_order)
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


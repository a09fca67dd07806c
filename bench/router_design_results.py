"""The router design benchmark's results: per-round metrics, the per-design summary (medians over rounds, cancel
outcomes), the B/A and B/C ratios, the PNG and the table printed at the end."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any


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


def summarize(results: dict[str, Any], names: dict[str, str], rounds: dict[str, list[dict]]) -> None:
    """Into `results`: per design its medians, rounds and cancel outcomes; the ratios; the cancel summary."""
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


def print_table(results: dict[str, Any]) -> None:
    keys = list(results["designs"]["A"]["metrics"])
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


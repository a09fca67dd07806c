"""Reading `vllm bench serve` and guidellm result files into one table, ratios ours / vLLM's server, plot, markdown.

Used by bench/ecosystem.py; kept apart so that the unit tests cover the parsing without vLLM, Ray or guidellm.
Every row has the same metrics, whatever the tool:

    output_tok_s, req_s, ttft_p50_ms, ttft_p99_ms, itl_p50_ms, tpot_p50_ms, e2e_p50_ms, completed, errors,
    output_tokens_mean

Each is the tool's own number (its definitions differ slightly, so compare targets within one tool, not tools).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

OURS = "platform"
PEER = "vllm-server"
TARGETS = (OURS, PEER)
TOOLS = ("vllm-bench", "guidellm")
METRICS = ("output_tok_s", "req_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "tpot_p50_ms", "e2e_p50_ms")


def parse_vllm_bench(data: dict[str, Any]) -> dict[str, Any]:
    """One `vllm bench serve --save-result` file (one concurrency level) -> one row."""
    completed = int(data.get("completed") or 0)
    return {
        "concurrency": data.get("max_concurrency"),
        "output_tok_s": data["output_throughput"],
        "req_s": data["request_throughput"],
        "ttft_p50_ms": data.get("p50_ttft_ms", data.get("median_ttft_ms")),
        "ttft_p99_ms": data.get("p99_ttft_ms"),
        "itl_p50_ms": data.get("p50_itl_ms", data.get("median_itl_ms")),
        "tpot_p50_ms": data.get("p50_tpot_ms", data.get("median_tpot_ms")),
        "e2e_p50_ms": data.get("p50_e2el_ms", data.get("median_e2el_ms")),
        "completed": completed,
        "errors": int(data.get("failed") or 0),
        "output_tokens_mean": data["total_output_tokens"] / completed if completed else None,
    }


def _dist(metrics: dict[str, Any], name: str) -> dict[str, Any]:
    return (metrics.get(name) or {}).get("successful") or {}


def _pct(metrics: dict[str, Any], name: str, p: str, scale: float = 1.0) -> float | None:
    value = (_dist(metrics, name).get("percentiles") or {}).get(p)
    return None if value is None else value * scale


def bunched_streams(bench: dict[str, Any], within_s: float = 0.01) -> int:
    """Successful streams of a guidellm benchmark whose every event arrived within `within_s` (at least 8 tokens).

    A diagnostic: on a busy 2-core box guidellm's client process sometimes reads a whole stream at once, at its end,
    which turns that request's TTFT into its e2e latency and its ITL into ~0."""
    n = 0
    for request in (bench.get("requests") or {}).get("successful") or []:
        t = (request.get("info") or {}).get("timings") or {}
        first, last = t.get("first_request_iteration"), t.get("last_request_iteration")
        if first is not None and last is not None and (t.get("token_iterations") or 0) >= 8 and last - first < within_s:
            n += 1
    return n


def parse_guidellm(data: dict[str, Any]) -> list[dict[str, Any]]:
    """A guidellm `run` JSON output (one benchmark per concurrency of a `concurrent` profile) -> rows."""
    rows = []
    for bench in data["benchmarks"]:
        m = bench["metrics"]
        totals = m["request_totals"]
        rows.append({
            "concurrency": bench["config"]["strategy"]["streams"],
            # guidellm's own throughput: the mean of its rate series, as its console table prints it.
            "output_tok_s": _dist(m, "output_tokens_per_second").get("mean"),
            "req_s": _dist(m, "requests_per_second").get("mean"),
            "ttft_p50_ms": _pct(m, "time_to_first_token_ms", "p50"),
            "ttft_p99_ms": _pct(m, "time_to_first_token_ms", "p99"),
            "itl_p50_ms": _pct(m, "inter_token_latency_ms", "p50"),
            "tpot_p50_ms": _pct(m, "time_per_output_token_ms", "p50"),
            "e2e_p50_ms": _pct(m, "request_latency", "p50", 1000.0),  # guidellm reports seconds
            "completed": int(totals["successful"]),
            "errors": int(totals["errored"]) + int(totals.get("incomplete") or 0),
            "output_tokens_mean": _dist(m, "output_token_count").get("mean"),
            "bunched_streams": bunched_streams(bench),
        })
    return rows


def ratios(results: dict[str, dict[str, dict[str, dict[str, Any]]]]) -> dict[str, dict[str, dict[str, float]]]:
    """ours / vLLM's server for every metric, per tool and concurrency (where both targets have the level).

    `results[tool][target][concurrency]` is a row. Above 1 is better for throughput, worse for latencies."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for tool, by_target in results.items():
        ours, peer = by_target.get(OURS, {}), by_target.get(PEER, {})
        for c in sorted(set(ours) & set(peer), key=int):
            out.setdefault(tool, {})[c] = {
                k: round(ours[c][k] / peer[c][k], 3) for k in METRICS
                if ours[c].get(k) is not None and peer[c].get(k)
            }
    return out


def _f(v: float | None, nd: int = 0) -> str:
    return "–" if v is None else f"{v:,.{nd}f}"


def _bunched(row: dict[str, Any]) -> str:
    return "–" if row.get("bunched_streams") is None else f"{row['bunched_streams']}/{row['completed']}"


def markdown(report: dict[str, Any]) -> str:
    """The README table: per tool and concurrency, both targets and the ratio."""
    lines = [
        ("| tool | c | target | output tok/s | req/s | TTFT p50 / p99 (ms) | ITL p50 (ms) | TPOT p50 (ms) | "
         "e2e p50 (ms) | tokens/req | errors | streams read at once |"),
        "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for tool, by_target in report["results"].items():
        levels = sorted({c for rows in by_target.values() for c in rows}, key=int)
        for c in levels:
            for target in TARGETS:
                r = by_target.get(target, {}).get(c)
                if r is None:
                    continue
                lines.append(
                    f"| {tool} | {c} | {target} | {_f(r['output_tok_s'])} | {_f(r['req_s'], 2)} | "
                    f"{_f(r['ttft_p50_ms'])} / {_f(r['ttft_p99_ms'])} | {_f(r['itl_p50_ms'], 1)} | "
                    f"{_f(r['tpot_p50_ms'], 1)} | {_f(r['e2e_p50_ms'])} | {_f(r['output_tokens_mean'], 1)} | "
                    f"{r['errors']} | {_bunched(r)} |"
                )
            q = report.get("ratios", {}).get(tool, {}).get(c)
            if q:
                lines.append(
                    f"| {tool} | {c} | **ours / vLLM** | **{_f(q.get('output_tok_s'), 2)}×** | "
                    f"{_f(q.get('req_s'), 2)}× | {_f(q.get('ttft_p50_ms'), 2)}× / {_f(q.get('ttft_p99_ms'), 2)}× | "
                    f"{_f(q.get('itl_p50_ms'), 2)}× | {_f(q.get('tpot_p50_ms'), 2)}× | {_f(q.get('e2e_p50_ms'), 2)}× "
                    "| | | |"
                )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Four panels (output tok/s, TTFT p50, ITL p50, e2e p50) against concurrency; one line per tool and target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("output_tok_s", "output tokens/s"), ("ttft_p50_ms", "TTFT p50 (ms)"),
              ("itl_p50_ms", "ITL p50 (ms)"), ("e2e_p50_ms", "e2e latency p50 (ms)")]
    colors = {OURS: "tab:blue", PEER: "tab:orange"}
    styles = {"vllm-bench": ("-", "o"), "guidellm": ("--", "s")}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    for ax, (key, title) in zip(axes, panels):
        for tool, by_target in report["results"].items():
            line, marker = styles.get(tool, (":", "^"))
            for target in TARGETS:
                rows = by_target.get(target, {})
                levels = sorted(rows, key=int)
                ys = [rows[c].get(key) for c in levels]
                if levels:
                    ax.plot([int(c) for c in levels], ys, line, marker=marker, color=colors[target],
                            label=f"{target} ({tool})")
        ax.set_xscale("log", base=2)
        levels = sorted({int(c) for by_target in report["results"].values() for rows in by_target.values()
                         for c in rows})
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrency")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    m = report.get("machine", {})
    fig.suptitle(f"OpenAI surface: gemma-serving platform vs vLLM's own server, same tiny model "
                 f"({m.get('cpu_count', '?')} cores, {m.get('cpu_model', '?')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""bench/token_path.py's accounting and output: CPU per output token per process group, ratios, table and plot."""

from __future__ import annotations

from typing import Any

import psutil

OURS = ("grpc", "openai")
PEER = "vllm-server"


def label_server(groups, pid: int, name: str) -> None:
    """Label a server process as `name` and its children (vLLM's engine core and workers) as `name/engine`."""
    groups.label(pid, name)
    try:
        for child in psutil.Process(pid).children(recursive=True):
            groups.label(child.pid, f"{name}/engine")
    except psutil.NoSuchProcess:
        pass


def _serving(group: str, serving_groups: tuple[str, ...]) -> bool:
    """Whether `group` is in the serving layer: named exactly, or under a name ending in "/" (engine excluded)."""
    return group in serving_groups or (not group.endswith("/engine")
                                       and any(g.endswith("/") and group.startswith(g) for g in serving_groups))


def serving_cpu_per_token(step: dict[str, Any], serving_groups: tuple[str, ...]) -> float | None:
    """CPU ms per output token of the serving layer (the named groups; engine core excluded)."""
    tokens = step.get("output_tokens_total") or 0
    if not tokens or not serving_groups:
        return None
    cpu = sum(v for g, v in step.get("cpu_s", {}).items() if _serving(g, serving_groups))
    return round(cpu * 1000 / tokens, 4)


def engine_cpu_per_token(step: dict[str, Any]) -> float | None:
    tokens = step.get("output_tokens_total") or 0
    cpu = sum(v for g, v in step.get("cpu_s", {}).items() if g.endswith("/engine"))
    return round(cpu * 1000 / tokens, 4) if tokens else None


def line(step: dict[str, Any]) -> str:
    errs = f" errors={step['errors']}" if step.get("errors") else ""
    window = f"  window {step['stream_window_ms']} ms" if step.get("stream_window_ms") is not None else ""
    level = f"c={step['concurrency']:<3}" if step.get("rate") is None else f"{step['rate']:g}/s"
    return (f"{step['target']:>13} {level} {step['output_tokens_per_s']:8.1f} tok/s  "
            f"ttft p50/p99 {step['ttft_ms']['p50']}/{step['ttft_ms']['p99']} ms  "
            f"itl p50/p99 {step['itl_ms']['p50']}/{step['itl_ms']['p99']} ms  "
            f"serving cpu {step.get('serving_cpu_ms_per_token')} ms/tok  ok {step['ok']}/{step['requests']}{errs}{window}")


def _by(steps: list[dict[str, Any]], key: str = "concurrency") -> dict[tuple[str, Any], dict[str, Any]]:
    return {(s["target"], s[key]): s for s in steps}


def _ratio(x, y) -> float | None:
    return round(x / y, 3) if x is not None and y not in (None, 0) else None


def rounds_of(steps: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The steps of each round (a run without rounds is one round)."""
    rounds: dict[int, list[dict[str, Any]]] = {}
    for step in steps:
        rounds.setdefault(step.get("round", 0), []).append(step)
    return [rounds[k] for k in sorted(rounds)]


def _median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def ratios(steps: list[dict[str, Any]], key: str = "concurrency") -> dict[str, dict[str, Any]]:
    """Per level (`key`: concurrency, or an open-loop step's request rate) and surface, the median over rounds of each
    round's ratios (ours / vLLM's server, in the same round), with every round's value beside it in `per_round`."""
    per_round = [_round_ratios(r, key) for r in rounds_of(steps)]
    out: dict[str, dict[str, Any]] = {}
    for c, surfaces in (per_round[0] if per_round else {}).items():
        for surface, first in surfaces.items():
            values = [r.get(c, {}).get(surface) for r in per_round]
            values = [v for v in values if v is not None]
            merged = {k: (round(_median([v[k] for v in values]), 3) if k != "unanswered" else
                          sum(v[k] for v in values)) if first[k] is not None else None for k in first}
            if len(values) > 1:
                merged["per_round"] = {k: [v[k] for v in values] for k in ("throughput", "serving_cpu_per_token")}
            out.setdefault(c, {})[surface] = merged
    return out


def median_steps(steps: list[dict[str, Any]], key: str = "concurrency") -> list[dict[str, Any]]:
    """One step per (target, level): the median over rounds of each figure (the steps themselves when there is
    one round)."""
    rounds = rounds_of(steps)
    if len(rounds) == 1:
        return steps
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for step in steps:
        groups.setdefault((step["target"], step[key]), []).append(step)
    out = []
    for (target, level), group in sorted(groups.items()):
        out.append({
            "target": target, key: level, "rounds": len(group),
            "output_tokens_per_s": _median([s["output_tokens_per_s"] for s in group]),
            "ttft_ms": {q: _median([s["ttft_ms"][q] for s in group]) for q in ("p50", "p99")},
            "itl_ms": {q: _median([s["itl_ms"][q] for s in group]) for q in ("p50", "p99")},
            "serving_cpu_ms_per_token": _median([s.get("serving_cpu_ms_per_token") for s in group]),
            "engine_cpu_ms_per_token": _median([engine_cpu_per_token(s) for s in group]),
            "ok": sum(s["ok"] for s in group), "requests": sum(s["requests"] for s in group),
        })
    return out


def _round_ratios(steps: list[dict[str, Any]], key: str = "concurrency") -> dict[str, dict[str, Any]]:
    """Per level and surface: ours / vLLM's server (throughput, CPU per token, ITL p99), TTFT added in ms."""
    by = _by(steps, key)
    out: dict[str, dict[str, Any]] = {}
    for (target, c), s in sorted(by.items()):
        peer = by.get((PEER, c))
        if target not in OURS or peer is None:
            continue
        out.setdefault(str(c), {})[target] = {
            "throughput": _ratio(s["output_tokens_per_s"], peer["output_tokens_per_s"]),
            "serving_cpu_per_token": _ratio(s["serving_cpu_ms_per_token"], peer["serving_cpu_ms_per_token"]),
            "ttft_p50_added_ms": round(s["ttft_ms"]["p50"] - peer["ttft_ms"]["p50"], 1)
            if s["ttft_ms"]["p50"] is not None and peer["ttft_ms"]["p50"] is not None else None,
            "itl_p99_ratio": _ratio(s["itl_ms"]["p99"], peer["itl_ms"]["p99"]),
            "unanswered": s["requests"] - s["ok"],
        }
    return out


#: The two kinds of step: closed loop at a concurrency, open loop (Poisson arrivals) at a request rate.
LADDERS = (("steps", "concurrency", "c", "ratios"), ("open_loop_steps", "rate", "req/s", "open_loop_ratios"))


def markdown(result: dict[str, Any]) -> str:
    return "\n\n".join(_markdown(result, *ladder) for ladder in LADDERS if result.get(ladder[0]))


def _markdown(result: dict[str, Any], steps_key: str, key: str, label: str, ratios_key: str) -> str:
    rows = [f"| target | {label} | output tok/s | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | serving CPU ms/token | "
            "engine core CPU ms/token | ok |", "|---|---|---|---|---|---|---|---|"]
    for s in sorted(median_steps(result[steps_key], key), key=lambda s: (s[key], s["target"])):
        engine = s.get("engine_cpu_ms_per_token", engine_cpu_per_token(s))
        rows.append(f"| {s['target']} | {s[key]} | {s['output_tokens_per_s']:.0f} | "
                    f"{s['ttft_ms']['p50']:.0f} / {s['ttft_ms']['p99']:.0f} | "
                    f"{s['itl_ms']['p50']:.1f} / {s['itl_ms']['p99']:.1f} | {_round4(s.get('serving_cpu_ms_per_token'))} | "
                    f"{_round4(engine)} | {s['ok']}/{s['requests']} |")
    rows.append("")
    rows.append(f"| {label} | surface | tok/s vs vLLM | serving CPU/token vs vLLM | TTFT p50 added (ms) | ITL p99 vs vLLM | "
                "per round: tok/s; CPU/token |")
    rows.append("|---|---|---|---|---|---|---|")
    for c, per in result.get(ratios_key, {}).items():
        for surface, r in per.items():
            rounds = r.get("per_round", {})
            spread = (f"{', '.join(map(str, rounds['throughput']))}; {', '.join(map(str, rounds['serving_cpu_per_token']))}"
                      if rounds else "")
            rows.append(f"| {c} | {surface} | {r['throughput']} | {r['serving_cpu_per_token']} | "
                        f"{r['ttft_p50_added_ms']} | {r['itl_p99_ratio']} | {spread} |")
    return "\n".join(rows)


def _round4(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def plot(result: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    closed = median_steps(result["steps"])
    opened = median_steps(result.get("open_loop_steps") or [], "rate")
    targets = sorted({s["target"] for s in closed})
    panels = [("output tok/s", closed, "concurrency", lambda s: s["output_tokens_per_s"]),
              ("TTFT p50 (ms)", closed, "concurrency", lambda s: s["ttft_ms"]["p50"]),
              ("serving CPU ms / output token", closed, "concurrency", lambda s: s.get("serving_cpu_ms_per_token"))]
    if opened:
        panels.append(("open loop: ITL p99 (ms)", opened, "rate", lambda s: s["itl_ms"]["p99"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2))
    colors = {t: f"C{i}" for i, t in enumerate(targets)}  # one colour per target in every panel
    for ax, (title, steps, key, value) in zip(axes, panels):
        for t in targets:
            pts = sorted((s[key], value(s)) for s in steps if s["target"] == t and value(s) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=t, color=colors[t])
        ax.set_title(title)
        ax.set_xlabel("requests / s (Poisson)" if key == "rate" else "concurrent streams")
        ax.grid(alpha=0.3)
    axes[0].legend()
    machine = result.get("machine", {})
    fig.suptitle(f"token path, tiny Gemma 3 text, {result['workload']['output_len']} tokens/request, "
                 f"{machine.get('cpu_count')} cores ({machine.get('cpu_model', '')[:40]})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

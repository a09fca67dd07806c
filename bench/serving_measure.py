"""The serving benchmark's measurements: the plan (load steps per round, target order rotated), running it with CPU
accounting per process group, and the aggregation (medians over rounds) and ratios (platform vs engine and naive)."""

from __future__ import annotations

import statistics
from typing import Any

from bench_common import now, progress
from loadgen import short
from serving_targets import PLATFORMS

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
# Aggregation and ratios


def _med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 3) if vals else None


def load_key(s: dict[str, Any]) -> str:
    return f"c{s['concurrency']}" if s["mode"] == "closed" else f"rate{s['rate']:g}"


def load_order(k: str):
    return (k.startswith("rate"), float(k.lstrip("crate")))


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


def ratios_for(steps: list[dict[str, Any]], platform: str, goal_concurrency: int) -> dict[str, Any]:
    """Per load and round: `platform` vs engine and vs naive (same round, same load); medians over rounds."""
    idx = {(s["target"], load_key(s), s["round"]): s for s in steps}
    loads = {(load_key(s), s["round"]) for s in steps if s["target"] == platform}
    out: dict[str, Any] = {}
    for load in sorted({k for k, _ in loads}, key=load_order):
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


"""Where time to first token goes at a concurrency above the engine's `max_num_seqs` (a queue): per round of
token-path runs, ours minus vLLM's server in TTFT p50, TTFT mean, decode time (mean e2e - mean TTFT) and mean e2e.

    .venv/bin/python bench/token_path_queue.py bench/results/token_path.json bench/results/token_path_ab3_*.json

With N closed-loop clients the mean e2e is N / request rate (Little's law): a faster decode at the same rate shows
as a longer wait for the first token, so TTFT alone does not tell serving time at such a level.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def differences(data: dict, concurrency: int, surface: str) -> list[dict[str, float]]:
    """Per round: ours (`surface`) minus vLLM's server, in ms (and the output tok/s ratio)."""
    rows = []
    for r in sorted({s["round"] for s in data["steps"]}):
        steps = {s["target"]: s for s in data["steps"] if s["concurrency"] == concurrency and s["round"] == r}
        ours, vllm = steps.get(surface), steps.get("vllm-server")
        if ours is None or vllm is None:
            continue

        def decode(s: dict) -> float:
            return s["e2e_ms"]["mean"] - s["ttft_ms"]["mean"]

        rows.append({"round": r, "ttft_p50": ours["ttft_ms"]["p50"] - vllm["ttft_ms"]["p50"],
                     "ttft_mean": ours["ttft_ms"]["mean"] - vllm["ttft_ms"]["mean"],
                     "decode_mean": decode(ours) - decode(vllm),
                     "e2e_mean": ours["e2e_ms"]["mean"] - vllm["e2e_ms"]["mean"],
                     "tok_s_ratio": ours["output_tokens_per_s"] / vllm["output_tokens_per_s"]})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", type=Path)
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args()
    for path in args.results:
        data = json.loads(path.read_text())
        for surface in ("grpc", "openai"):
            rows = differences(data, args.concurrency, surface)
            if not rows:
                continue
            medians = {k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0] if k != "round"}
            print(f"{path.name} {surface} c={args.concurrency}: medians {medians}")
            for r in rows:
                print("   ", {k: round(v, 2) for k, v in r.items()})


if __name__ == "__main__":
    main()

"""bench/token_path_report.py: ratios within each round, medians over rounds, one table row per target and level."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from token_path_report import markdown, median_steps, ratios  # noqa: E402


def step(target: str, c: int, tok_s: float, cpu: float, round_index: int) -> dict:
    return {"target": target, "concurrency": c, "round": round_index, "output_tokens_per_s": tok_s,
            "ttft_ms": {"p50": 100.0, "p99": 200.0}, "itl_ms": {"p50": 5.0, "p99": 8.0},
            "serving_cpu_ms_per_token": cpu, "cpu_s": {"vllm-server/engine": 0.1}, "output_tokens_total": 1000,
            "ok": 10, "requests": 10}


STEPS = [
    # round 0: the peer has a slow round (ratio 2.0), round 1 and 2 ratios 1.0 and 1.2
    step("vllm-server", 16, 500.0, 0.10, 0), step("grpc", 16, 1000.0, 0.05, 0),
    step("vllm-server", 16, 1000.0, 0.10, 1), step("grpc", 16, 1000.0, 0.10, 1),
    step("vllm-server", 16, 1000.0, 0.10, 2), step("grpc", 16, 1200.0, 0.12, 2),
]


def test_ratios_are_medians_of_each_rounds_own_ratio():
    r = ratios(STEPS)["16"]["grpc"]
    assert r["throughput"] == 1.2  # per round 2.0, 1.0, 1.2 -> median 1.2 (not the ratio of medians, 1.0)
    assert r["serving_cpu_per_token"] == 1.0  # per round 0.5, 1.0, 1.2
    assert r["per_round"] == {"throughput": [2.0, 1.0, 1.2], "serving_cpu_per_token": [0.5, 1.0, 1.2]}


def test_one_table_row_per_target_and_level_with_medians():
    rows = median_steps(STEPS)
    assert [(s["target"], s["rounds"]) for s in rows] == [("grpc", 3), ("vllm-server", 3)]
    assert rows[0]["output_tokens_per_s"] == 1000.0 and rows[0]["ok"] == 30
    table = markdown({"steps": STEPS, "ratios": ratios(STEPS)})
    assert "| grpc | 16 | 1000 |" in table and "2.0, 1.0, 1.2; 0.5, 1.0, 1.2" in table


def test_a_run_without_rounds_is_one_round():
    single = [{k: v for k, v in s.items() if k != "round"} for s in STEPS[:2]]
    assert median_steps(single) == single
    assert ratios(single)["16"]["grpc"]["throughput"] == 2.0 and "per_round" not in ratios(single)["16"]["grpc"]


def test_a_platform_step_shows_the_replicas_coalescing_window():
    from token_path_report import line

    assert "window 36.5 ms" in line({**STEPS[1], "stream_window_ms": 36.5})
    assert "window" not in line(STEPS[0])


def open_step(target: str, rate: float, itl_p99: float, round_index: int) -> dict:
    s = step(target, 0, rate * 64, 0.1, round_index)
    return {**s, "concurrency": None, "rate": rate, "itl_ms": {"p50": 4.0, "p99": itl_p99}}


OPEN_STEPS = [open_step("vllm-server", 4.0, 8.0, 0), open_step("grpc", 4.0, 6.0, 0),
              open_step("vllm-server", 4.0, 10.0, 1), open_step("grpc", 4.0, 12.0, 1),
              open_step("vllm-server", 4.0, 10.0, 2), open_step("grpc", 4.0, 9.0, 2)]


def test_open_loop_steps_compare_at_each_request_rate():
    r = ratios(OPEN_STEPS, "rate")["4.0"]["grpc"]
    assert r["itl_p99_ratio"] == 0.9  # per round 0.75, 1.2, 0.9
    rows = median_steps(OPEN_STEPS, "rate")
    assert [(s["target"], s["rate"], s["itl_ms"]["p99"]) for s in rows] == [("grpc", 4.0, 9.0), ("vllm-server", 4.0, 10.0)]
    table = markdown({"steps": STEPS, "ratios": ratios(STEPS), "open_loop_steps": OPEN_STEPS,
                      "open_loop_ratios": ratios(OPEN_STEPS, "rate")})
    assert "| target | req/s |" in table and "| grpc | 4.0 | 256 |" in table and "| grpc | 16 | 1000 |" in table


def test_an_open_loop_step_line_shows_its_rate():
    from token_path_report import line

    assert " 4/s " in line(OPEN_STEPS[1]) and "c=" not in line(OPEN_STEPS[1])

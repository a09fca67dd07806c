"""bench/ecosystem_results.py: parsing `vllm bench serve` and guidellm result files, ratios, table and plot.

The samples keep the shape (keys, nesting, units) of files the two tools wrote in a real run of bench/ecosystem.py
(vLLM 0.32.0's `--save-result` JSON; guidellm 0.8.1's JSON output), cut down to the fields that are read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import ecosystem_results as er

VLLM_BENCH = {
    "date": "20261128-195056", "endpoint_type": "openai-chat", "backend": "openai-chat", "label": None,
    "model_id": "gemma-3-tiny", "tokenizer_id": "/root/.cache/gemma-serving/models/text", "num_prompts": 16,
    "request_rate": "inf", "burstiness": 1.0, "max_concurrency": 8, "duration": 2.0170941050000692,
    "completed": 16, "failed": 0, "total_input_tokens": 2733, "total_output_tokens": 1024,
    "request_throughput": 7.9322030441407945, "request_goodput": None, "output_throughput": 507.66099482501085,
    "total_token_throughput": 1862.5804273023102, "max_output_tokens_per_s": 531.0, "max_concurrent_requests": 16,
    "mean_ttft_ms": 163.07347831263996, "median_ttft_ms": 138.742183499744, "std_ttft_ms": 44.22492179527668,
    "p50_ttft_ms": 138.742183499744, "p99_ttft_ms": 212.3382172501806,
    "mean_tpot_ms": 13.357054524801372, "median_tpot_ms": 13.429851023815106, "p50_tpot_ms": 13.429851023815106,
    "p99_tpot_ms": 14.737639239673525, "mean_itl_ms": 13.14835054785135, "median_itl_ms": 13.248459000351431,
    "p50_itl_ms": 13.248459000351431, "p99_itl_ms": 22.301713809429202, "mean_e2el_ms": 1004.5679133751264,
    "median_e2el_ms": 1002.7782259994638, "p50_e2el_ms": 1002.7782259994638, "p99_e2el_ms": 1058.4273140010737,
}


def _dist(mean: float, p50: float, p99: float, count: int = 16) -> dict:
    """A guidellm status-split distribution (successful / errored / incomplete / total), percentiles p001..p999."""
    pct = {"p001": p50, "p01": p50, "p05": p50, "p10": p50, "p25": p50, "p50": p50, "p75": p99, "p90": p99,
           "p95": p99, "p99": p99, "p999": p99}
    full = {"mean": mean, "median": p50, "mode": p50, "variance": 0.0, "std_dev": 0.0, "min": p50, "max": p99,
            "count": count, "total_sum": mean * count, "percentiles": pct, "pdf": None, "mean_ci": None,
            "percentile_cis": None}
    empty = {**full, "mean": 0.0, "median": 0.0, "count": 0, "percentiles": dict.fromkeys(pct, 0.0)}
    return {"successful": full, "errored": empty, "incomplete": empty, "total": full}


def _guidellm_benchmark(streams: int, *, tok_s: float, ttft: float, latency_s: float, errored: int = 0) -> dict:
    return {
        "type_": "generative_benchmark",
        "config": {"strategy": {"type_": "concurrent", "worker_count": streams, "max_concurrency": streams,
                                "streams": streams, "rampup_duration": 0.0}},
        "metrics": {
            "request_totals": {"successful": 16, "errored": errored, "incomplete": 1, "total": 17 + errored},
            "requests_per_second": _dist(7.188376463072531, 1.6656767582259167, 111.53284050417487),
            "output_tokens_per_second": _dist(tok_s, 362.9, 2253.8, count=1024),
            "time_to_first_token_ms": _dist(198.4, ttft, 316.251277923584),
            "inter_token_latency_ms": _dist(14.07, 13.544075072757781, 16.69, count=1008),
            "time_per_output_token_ms": _dist(16.95, 15.05996659398079, 19.25, count=1024),
            "request_latency": _dist(1.087, latency_s, 1.2356247901916504),
            "output_token_count": _dist(64.0, 64.0, 64.0),
        },
        "requests": {"successful": [], "errored": [], "incomplete": [], "total": None},
        "duration": 5.091610908508301,
    }


GUIDELLM = {
    "metadata": {"version": 2, "guidellm_version": "0.8.1", "python_version": "3.11.7"},
    "config": {"spec": {"profile": {"kind": "concurrent", "streams": [1, 8]}}},
    "benchmarks": [
        _guidellm_benchmark(1, tok_s=100.6, ttft=24.3, latency_s=0.5),
        _guidellm_benchmark(8, tok_s=460.056093636642, ttft=157.46736526489258, latency_s=0.9655518531799316,
                            errored=2),
    ],
}


def test_vllm_bench_file_becomes_one_row():
    row = er.parse_vllm_bench(VLLM_BENCH)
    assert row["concurrency"] == 8
    assert row["output_tok_s"] == pytest.approx(507.66, abs=0.01)
    assert row["req_s"] == pytest.approx(7.93, abs=0.01)
    assert row["ttft_p50_ms"] == pytest.approx(138.74, abs=0.01)
    assert row["ttft_p99_ms"] == pytest.approx(212.34, abs=0.01)
    assert row["itl_p50_ms"] == pytest.approx(13.25, abs=0.01)
    assert row["tpot_p50_ms"] == pytest.approx(13.43, abs=0.01)
    assert row["e2e_p50_ms"] == pytest.approx(1002.78, abs=0.01)
    assert (row["completed"], row["errors"], row["output_tokens_mean"]) == (16, 0, 64.0)


def test_guidellm_file_becomes_one_row_per_concurrency():
    rows = er.parse_guidellm(GUIDELLM)
    assert [r["concurrency"] for r in rows] == [1, 8]
    r8 = rows[1]
    assert r8["output_tok_s"] == pytest.approx(460.06, abs=0.01)
    assert r8["req_s"] == pytest.approx(7.19, abs=0.01)
    assert r8["ttft_p50_ms"] == pytest.approx(157.47, abs=0.01)
    assert r8["ttft_p99_ms"] == pytest.approx(316.25, abs=0.01)
    assert r8["itl_p50_ms"] == pytest.approx(13.54, abs=0.01)
    assert r8["tpot_p50_ms"] == pytest.approx(15.06, abs=0.01)
    assert r8["e2e_p50_ms"] == pytest.approx(965.55, abs=0.01)  # seconds in the file, ms in the row
    assert (r8["completed"], r8["errors"], r8["output_tokens_mean"]) == (16, 3, 64.0)  # errored + incomplete


def test_ratios_are_ours_over_vllm_server_per_tool_and_level():
    ours = {**er.parse_vllm_bench(VLLM_BENCH), "output_tok_s": 254.0, "ttft_p50_ms": 277.5, "tpot_p50_ms": None}
    peer = er.parse_vllm_bench(VLLM_BENCH)
    results = {
        "vllm-bench": {er.OURS: {"8": ours, "32": ours}, er.PEER: {"8": peer}},
        "guidellm": {er.OURS: {"1": er.parse_guidellm(GUIDELLM)[0]}},
    }
    q = er.ratios(results)
    assert list(q) == ["vllm-bench"]  # guidellm has no vllm-server rows: no ratio
    assert list(q["vllm-bench"]) == ["8"]  # c=32 only on one side
    assert q["vllm-bench"]["8"]["output_tok_s"] == pytest.approx(254.0 / 507.66, abs=0.001)
    assert q["vllm-bench"]["8"]["ttft_p50_ms"] == pytest.approx(2.0, abs=0.001)
    assert q["vllm-bench"]["8"]["req_s"] == 1.0
    assert "tpot_p50_ms" not in q["vllm-bench"]["8"]


def test_markdown_table_and_plot(tmp_path):
    results = {tool: {t: {"1": rows[0], "8": rows[1]} for t in er.TARGETS}
               for tool, rows in (("vllm-bench", [er.parse_vllm_bench({**VLLM_BENCH, "max_concurrency": 1})] * 2),
                                  ("guidellm", er.parse_guidellm(GUIDELLM)))}
    report = {"results": results, "ratios": er.ratios(results), "machine": {"cpu_count": 2, "cpu_model": "x"}}
    table = er.markdown(report)
    assert "| guidellm | 8 | platform | 460 | 7.19 | 157 / 316 | 13.5 | 15.1 | 966 | 64.0 | 3 | 0/16 |" in table
    assert "| vllm-bench | 1 | **ours / vLLM** | **1.00×** |" in table
    pytest.importorskip("matplotlib")
    er.plot(report, tmp_path / "ecosystem.png")
    assert (tmp_path / "ecosystem.png").stat().st_size > 10_000

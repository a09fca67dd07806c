"""`gemma-serving metrics`: the per-service summary from router and engine metrics (real prometheus_client output,
a real router over FakeEngine for the command itself)."""

from __future__ import annotations

import json

import grpc
import pytest
import yaml
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.cli import main
from gemma_serving.client import message
from gemma_serving.telemetry import snapshot
from gemma_serving.telemetry.metrics import RouterMetrics
from prometheus_client import generate_latest

from tests.unit.conftest import CONFIG, start_router

# Engine metrics as Ray's metrics agent exports them (two text replicas, one vision replica).
ENGINE_TEXT = """\
# TYPE ray_vllm_kv_cache_usage_perc gauge
ray_vllm_kv_cache_usage_perc{service="text",model_name="text-model",engine="0",ReplicaId="a"} 0.5
ray_vllm_kv_cache_usage_perc{service="text",model_name="text-model",engine="0",ReplicaId="b"} 0.7
ray_vllm_kv_cache_usage_perc{service="vision",model_name="vision-model",engine="0",ReplicaId="c"} 0.1
# TYPE ray_vllm_num_requests_waiting gauge
ray_vllm_num_requests_waiting{service="text",model_name="text-model",engine="0",ReplicaId="a"} 3
ray_vllm_num_requests_waiting{service="text",model_name="text-model",engine="0",ReplicaId="b"} 1
# TYPE ray_vllm_num_preemptions counter
ray_vllm_num_preemptions_total{service="text",model_name="text-model",engine="0",ReplicaId="a"} 2
# TYPE ray_gemma_serving_replica_rss_bytes gauge
ray_gemma_serving_replica_rss_bytes{service="text",model="text-model",ReplicaId="a"} 1073741824
ray_gemma_serving_replica_rss_bytes{service="text",model="text-model",ReplicaId="b"} 2147483648
"""


def router_text() -> str:
    m = RouterMetrics()
    for code, n in (("OK", 3), ("INTERNAL", 1), ("INVALID_ARGUMENT", 2)):
        m.requests.labels("text", "text-model", "default", code).inc(n)
    for seconds in (0.1, 0.2, 0.3, 4.0):
        m.ttft.labels("text", "text-model", "default").observe(seconds)
        m.duration.labels("text", "text-model", "default", "OK").observe(seconds * 2)
    m.completion_tokens.labels("text", "text-model", "default").inc(92)
    m.replicas.labels("text").set(2)
    m.service_state.labels("text", "ready").set(0)
    m.service_state.labels("text", "degraded").set(1)
    m.quality.labels("text", "text-model", "", "repetition").observe(0.9)
    m.quality.labels("text", "text-model", "", "repetition").observe(0.7)
    return generate_latest(m.registry).decode()


def test_summary_per_service_from_router_and_engine_metrics():
    summary = snapshot.summarize(snapshot.parse([router_text(), ENGINE_TEXT]))
    assert set(summary) == {"text", "vision"}
    text = summary["text"]
    assert text["requests"] == 6
    assert text["success_rate"] == 0.75  # 3 OK of 4: the 2 INVALID_ARGUMENT are the client's
    assert text["replicas"] == 2 and text["state"] == "degraded"
    assert 0.1 <= text["time_to_first_token_s"]["p50"] <= 0.25 and text["time_to_first_token_s"]["p95"] > 2.5
    assert text["tokens_per_second_per_request"] == pytest.approx(92 / 9.2, abs=0.01)
    assert text["engine"] == {"kv_cache_usage": 0.6, "requests_running": 0, "requests_waiting": 4,
                              "preemptions": 2, "replicas_reporting": 2, "max_replica_rss_bytes": 2147483648}
    assert text["quality"] == {"repetition": 0.8}
    assert summary["vision"]["engine"]["kv_cache_usage"] == 0.1 and summary["vision"]["requests"] == 0


def test_router_replicas_add_up_and_a_window_counts_only_its_own_requests():
    one = snapshot.parse([router_text()])
    two = snapshot.parse([router_text(), router_text()])
    assert snapshot.summarize(two)["text"]["requests"] == 2 * snapshot.summarize(one)["text"]["requests"]
    window = snapshot.summarize(snapshot.delta(one, two))["text"]
    assert window["requests"] == 6 and window["replicas"] == 4  # gauges: the later scrape as is (summed)


@pytest.mark.parametrize("q,expected", [(0.5, 1.5), (0.25, 1.0), (1.0, 4.0)])
def test_quantile_interpolates_like_histogram_quantile(q, expected):
    buckets = {1.0: 2, 2.0: 6, 4.0: 8, float("inf"): 8}
    assert snapshot.quantile(q, buckets) == pytest.approx(expected)
    assert snapshot.quantile(0.5, {1.0: 0, float("inf"): 0}) is None


def test_ray_discovery_file_lists_every_node(tmp_path):
    path = tmp_path / "sd.json"
    path.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": ["10.0.0.1:8080", "10.0.0.2:8080"]}]))
    assert snapshot.ray_metrics_urls(path) == ["http://10.0.0.1:8080/metrics", "http://10.0.0.2:8080/metrics"]
    assert snapshot.ray_metrics_urls(tmp_path / "missing.json") == []
    # No discovery file (Ray without its dashboard): the export ports Ray writes into its session directory.
    (tmp_path / "session_latest").mkdir()
    (tmp_path / "session_latest" / "metrics_export_port_abc123").write_text("42749")
    assert snapshot.ray_metrics_urls(tmp_path / "missing.json") == ["http://127.0.0.1:42749/metrics"]


async def test_the_metrics_command_prints_and_writes_the_summary_of_a_running_router(tmp_path, capsys, config):
    router, _backend = await start_router(config)
    port = router.metrics.serve("127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.port}")
    try:
        stub = pb_grpc.InferenceStub(channel)
        for _ in range(4):
            await stub.Generate(pb.GenerateRequest(model="text-model", messages=[message("hi")],
                                                   sampling=pb.SamplingParams(max_tokens=5)))
        config_path = tmp_path / "config.yaml"
        config_path.write_text(yaml.safe_dump(CONFIG))
        out = tmp_path / "snapshot.json"
        code = main(["metrics", "--config", str(config_path), "--router-metrics", f"http://127.0.0.1:{port}/metrics",
                     "--ray-discovery-file", str(tmp_path / "none.json"), "--json", str(out)])
        assert code == 0
        printed = capsys.readouterr().out
        assert "text: state=ready" in printed and "requests=4 success=100.0%" in printed
        text = json.loads(out.read_text())["services"]["text"]
        assert text["requests"] == 4 and text["completion_tokens"] == 20 and text["success_rate"] == 1.0
        assert text["engine"]["kv_cache_usage"] is None  # no engine metrics reachable: the router's numbers stay
        # A window with no traffic in it: no requests, however many came before.
        assert main(["metrics", "--config", str(config_path), "--router-metrics", f"http://127.0.0.1:{port}/metrics",
                     "--ray-discovery-file", str(tmp_path / "none.json"), "--window", "0.2", "--json", "-"]) == 0
        windowed = json.loads(capsys.readouterr().out)
        assert windowed["window_s"] == 0.2 and windowed["services"]["text"]["requests"] == 0
    finally:
        await channel.close()
        await router.drain_and_stop(0)

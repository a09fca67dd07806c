"""Engine metrics of a replica: vLLM's Ray metric wrappers with a service tag, the engine-load stat logger, replica
memory, and the deployment's autoscaling stats (nothing started: Ray metrics record locally without a cluster)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from gemma_serving.config import ServiceConfig, ServiceKind
from gemma_serving.deployments.engine_metrics import (
    ReplicaMemoryGauges,
    attach_engine_metrics,
    process_tree_rss_bytes,
    service_stat_logger,
    service_tagged,
)
from gemma_serving.engines.engine_load import EngineLoadTracker
from gemma_serving.engines.fake import FakeEngine

from tests.unit.conftest import make_deployment


def test_vllm_ray_metrics_carry_the_service_beside_vllms_own_labels():
    from vllm.v1.metrics.ray_wrappers import RayCounterWrapper, RayGaugeWrapper, RayHistogramWrapper

    gauge = service_tagged(RayGaugeWrapper, "text")(name="vllm:test_kv_usage", documentation="d",
                                                    labelnames=["model_name", "engine"])
    labelled = gauge.labels("text-model", "0")  # vLLM passes label values by position
    assert gauge.metric._tag_keys == ("model_name", "engine", "ReplicaId", "service")
    assert labelled._tags == {"model_name": "text-model", "engine": "0", "ReplicaId": ""}
    assert gauge.metric._default_tags == {"service": "text"}
    labelled.set(0.5)  # Ray checks every tag key has a value: raises if service were missing
    counter = service_tagged(RayCounterWrapper, "vision")(name="vllm:test_preemptions", documentation="d")
    counter.inc(2)  # unlabelled use: the service comes from the default tags
    histogram = service_tagged(RayHistogramWrapper, "audio")(name="vllm:test_ttft", documentation="d",
                                                             labelnames=["model_name"], buckets=[0.1, 1.0])
    histogram.labels(model_name="m").observe(0.3)
    with pytest.raises(ValueError, match="Missing value"):
        RayGaugeWrapper(name="vllm:test_untagged", labelnames=["model_name"]).metric.set(1.0, tags={})


def test_the_stat_logger_builds_every_metric_kind_with_the_service_tag():
    logger = service_stat_logger("text")
    assert logger.__mro__[1].__name__ == "RayPrometheusStatLogger"
    for cls in (logger._gauge_cls, logger._counter_cls, logger._histogram_cls, logger._spec_decoding_cls._counter_cls,
                logger._kv_connector_cls._gauge_cls, logger._perf_metrics_cls._counter_cls):
        assert "service" in cls._get_tag_keys(["model_name"]), cls


def test_the_load_logger_keeps_the_last_scheduler_statistics():
    from vllm.v1.metrics.stats import SchedulerStats

    tracker = EngineLoadTracker()
    logger = tracker.stat_logger()(None, 0)
    logger.record(SchedulerStats(num_running_reqs=2, num_waiting_reqs=3, num_skipped_waiting_reqs=1,
                                 kv_cache_usage=0.4), None)
    logger.record(None, None)  # steps without scheduler stats keep the last values
    assert (tracker.latest.running, tracker.latest.waiting, tracker.latest.kv_cache_usage) == (2, 4, 0.4)


def vllm_engine():
    from gemma_serving.config import ModelConfig
    from gemma_serving.engines.vllm import VllmEngine

    return VllmEngine(ModelConfig.model_validate({"name": "m", "source": "/m"}), Path("/m"))  # not started


def test_without_export_or_saturation_policy_vllm_gets_no_stat_loggers():
    engine = vllm_engine()
    assert attach_engine_metrics(engine, "text", "m", export=False, track_load=False) is None
    assert engine.stat_loggers == []  # AsyncLLM gets stat_loggers=None: vLLM's statistics stay off


@pytest.mark.parametrize("export,track_load", [(False, True), (True, False)])
def test_the_load_tracker_listens_when_needed_and_ray_export_only_inside_serve(export, track_load):
    engine = vllm_engine()
    assert attach_engine_metrics(engine, "text", "m", export=export, track_load=track_load) is None  # not in Serve
    assert [cls.__name__ for cls in engine.stat_loggers] == ["EngineLoadLogger"]
    assert attach_engine_metrics(FakeEngine(), "text", "m", export=True, track_load=True) is None  # not vLLM


def test_replica_memory_counts_the_engine_child_process():
    before, _ = process_tree_rss_bytes()
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(64 * 2**20); time.sleep(60)"])
    try:
        for _ in range(100):
            try:
                if psutil.Process(child.pid).memory_info().rss > 64 * 2**20:
                    break
            except psutil.Error:
                pass
            time.sleep(0.05)
        rss, pids = process_tree_rss_bytes()
        assert child.pid in pids and rss >= before + 64 * 2**20
        sample = ReplicaMemoryGauges("text", "m", "r1").sample()
        assert sample["rss_bytes"] >= 64 * 2**20 and sample["gpu_memory_bytes"] is None  # no NVML on this box
    finally:
        child.kill()
        child.wait()


class LoadedEngine(FakeEngine):
    def __init__(self):
        super().__init__()
        self.load_tracker = EngineLoadTracker()

    def load(self):
        return self.load_tracker.latest


async def test_the_deployment_reports_the_engine_load_as_autoscaling_stats():
    service = ServiceConfig.model_validate({"model": {"name": "m", "source": "/m"}})
    engine = LoadedEngine()
    deployment = await make_deployment(ServiceKind.TEXT, service, engine)
    assert await deployment.record_autoscaling_stats() == {}  # before the engine's first step
    engine.load_tracker.update(running=4, waiting=2, kv_cache_usage=0.9)
    assert await deployment.record_autoscaling_stats() == {"running": 4.0, "waiting": 2.0, "kv_cache_usage": 0.9}
    assert (await deployment.describe())["engine_load"]["kv_cache_usage"] == 0.9
    plain = await make_deployment(ServiceKind.TEXT, service, FakeEngine())
    assert await plain.record_autoscaling_stats() == {}


def test_an_idle_vllm_engine_reports_no_load_whatever_its_last_step_saw():
    engine = vllm_engine()
    assert engine.load() is None
    engine.load_tracker.update(running=8, waiting=3, kv_cache_usage=0.95)  # the last step before the load ended
    assert engine.load().as_stats() == {"running": 0.0, "waiting": 0.0, "kv_cache_usage": 0.0}
    engine.in_flight.add("r1")
    assert engine.load().kv_cache_usage == 0.95

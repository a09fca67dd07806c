"""Engine metrics of a replica, exported through Ray's metrics agent (the port the chart's PodMonitoring and
ServiceMonitor scrape on every Ray pod, `metrics` = 8080).

- vLLM's own Prometheus metrics (KV-cache usage, running/waiting requests, preemptions, prefix-cache hits, prompt and
  generation tokens, TTFT / ITL / e2e as the engine sees them) come from vLLM's `RayPrometheusStatLogger`, which
  records them with `ray.util.metrics`; Ray exports them as `ray_vllm_*` (`vllm:kv_cache_usage_perc` becomes
  `ray_vllm_kv_cache_usage_perc`, counters gain `_total`). vLLM labels them `model_name`, `engine` and `ReplicaId`;
  the subclass here adds `service`. No counter is re-implemented.
- Replica memory: `ray_gemma_serving_replica_rss_bytes` (the replica process and its children, i.e. vLLM's engine
  core) and, where NVML is available, `ray_gemma_serving_replica_gpu_memory_bytes` (GPU memory those processes use),
  sampled every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gemma_serving.telemetry.metrics import REPLICA_GPU_MEMORY_METRIC, REPLICA_RSS_METRIC

log = logging.getLogger(__name__)


def service_tagged(wrapper: type, service: str) -> type:
    """A subclass of one of vLLM's Ray metric wrappers (gauge, counter, histogram) that adds a `service` tag to every
    metric it creates (a Ray default tag, so labelled and unlabelled uses both carry it)."""
    from vllm.v1.metrics.ray_wrappers import RayPrometheusMetric

    class ServiceTagged(wrapper):
        @staticmethod
        def _get_tag_keys(labelnames):
            return (*RayPrometheusMetric._get_tag_keys(labelnames), "service")

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.metric.set_default_tags({"service": service})

        def _build_tags(self, *labels, **labelskwargs):
            # vLLM passes label values by position; map them onto its own tag keys (service is a default tag).
            labelskwargs.update(zip(self.metric._tag_keys, labels))
            return RayPrometheusMetric._build_tags(self, **labelskwargs)

    ServiceTagged.__name__ = f"{wrapper.__name__}For{service.title()}"
    return ServiceTagged


def service_stat_logger(service: str) -> type:
    """vLLM's RayPrometheusStatLogger with a `service` tag on every metric: an AsyncLLM stat logger factory."""
    from vllm.v1.metrics.ray_wrappers import (
        RayCounterWrapper,
        RayGaugeWrapper,
        RayHistogramWrapper,
        RayKVConnectorProm,
        RayPerfMetricsProm,
        RayPrometheusStatLogger,
        RaySpecDecodingProm,
    )

    counter = service_tagged(RayCounterWrapper, service)
    gauge = service_tagged(RayGaugeWrapper, service)
    histogram = service_tagged(RayHistogramWrapper, service)
    return type(f"RayStatLoggerFor{service.title()}", (RayPrometheusStatLogger,), {
        "_gauge_cls": gauge, "_counter_cls": counter, "_histogram_cls": histogram,
        "_spec_decoding_cls": type("SpecDecoding", (RaySpecDecodingProm,), {"_counter_cls": counter}),
        "_kv_connector_cls": type("KVConnector", (RayKVConnectorProm,), {
            "_gauge_cls": gauge, "_counter_cls": counter, "_histogram_cls": histogram}),
        "_perf_metrics_cls": type("PerfMetrics", (RayPerfMetricsProm,), {"_counter_cls": counter}),
    })


def process_tree_rss_bytes(pid: int | None = None) -> tuple[int, set[int]]:
    """Resident memory of a process and all its children (vLLM runs its engine core in a child), and their pids."""
    import psutil

    root = psutil.Process(pid)
    processes = [root, *root.children(recursive=True)]
    total, pids = 0, set()
    for process in processes:
        try:
            total += process.memory_info().rss
            pids.add(process.pid)
        except psutil.Error:  # exited meanwhile
            continue
    return total, pids


def gpu_memory_bytes(pids: set[int]) -> int | None:
    """GPU memory used by `pids` on all GPUs (NVML), or None where NVML is unavailable (CPU nodes)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        used = 0
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid in pids and proc.usedGpuMemory:
                    used += proc.usedGpuMemory
        return used
    except pynvml.NVMLError:
        return None


class ReplicaMemoryGauges:
    """Ray gauges of a replica's RSS and GPU memory, tagged with service, model and Serve replica id."""

    def __init__(self, service: str, model: str, replica_id: str, *, interval_s: float = 5.0) -> None:
        from ray.util.metrics import Gauge

        tags = {"service": service, "model": model, "ReplicaId": replica_id}
        self._rss = Gauge(REPLICA_RSS_METRIC, "Resident memory of a serving replica and its engine processes (bytes).",
                          tag_keys=tuple(tags)).set_default_tags(tags)
        self._gpu = Gauge(REPLICA_GPU_MEMORY_METRIC, "GPU memory used by a serving replica's engine processes (bytes).",
                          tag_keys=tuple(tags)).set_default_tags(tags)
        self._interval_s = interval_s
        self.last: dict[str, int | None] = {}

    def sample(self) -> dict[str, int | None]:
        """Measure once and record the gauges; returns {"rss_bytes": ..., "gpu_memory_bytes": ... or None}."""
        rss, pids = process_tree_rss_bytes()
        gpu = gpu_memory_bytes(pids)
        self._rss.set(rss)
        if gpu is not None:
            self._gpu.set(gpu)
        self.last = {"rss_bytes": rss, "gpu_memory_bytes": gpu}
        return self.last

    async def run(self) -> None:
        """Sample forever (cancel the task to stop); a failed sample is logged, never raised."""
        while True:
            try:
                await asyncio.to_thread(self.sample)
            except Exception as exc:
                log.warning("replica memory sample failed: %s", type(exc).__name__)
            await asyncio.sleep(self._interval_s)


def serve_replica_id() -> str | None:
    """This Serve replica's id, or None outside a Serve replica."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        return serve.get_replica_context().replica_id.unique_id
    except RayServeException:
        return None


def attach_engine_metrics(engine: Any, service: str, model: str, *, export: bool,
                          track_load: bool) -> ReplicaMemoryGauges | None:
    """Give a vLLM engine (one with `stat_loggers`, before its start) its stat loggers: the load tracker's when
    `track_load` (the engine_saturation autoscaling signal), and inside a Serve replica with `export` the
    service-tagged Ray stat logger; returns the replica's memory gauges to sample then, else None. With neither, the
    engine runs with vLLM's statistics off (no per-step stats work), as before engine metrics existed. Outside Serve
    (unit tests, in-process use) there is no metrics agent to export to."""
    stat_loggers = getattr(engine, "stat_loggers", None)
    if stat_loggers is None:  # not a vLLM engine
        return None
    if track_load or export:
        stat_loggers.append(engine.load_tracker.stat_logger())
    replica_id = serve_replica_id()
    if not export or replica_id is None:
        return None
    stat_loggers.append(service_stat_logger(service))
    return ReplicaMemoryGauges(service, model, replica_id)

"""A per-service metrics summary from Prometheus text, for people without Grafana (`gemma-serving metrics`).

Reads the routers' metrics (gemma_serving_*) and the replicas' engine metrics (ray_vllm_*, ray_gemma_serving_*, from
Ray's metrics export port) and reduces them to one record per service: requests, success rate (client errors left
out, as in the alert), TTFT and end-to-end p50/p95, tokens per second per request, engine KV-cache usage and queues,
replicas, health state, replica memory and quality score means. Counters and histograms are cumulative since the
processes started, or, given two scrapes (`delta`), over the time between them.
"""

from __future__ import annotations

import json
import math
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

#: Status codes caused by the client, left out of the success rate (as in the GemmaServingHighErrorRate alert).
CLIENT_CODES = {"INVALID_ARGUMENT", "NOT_FOUND", "CANCELLED", "UNAUTHENTICATED", "PERMISSION_DENIED"}
_CUMULATIVE = ("_total", "_bucket", "_sum", "_count")

#: (sample name, sorted label items) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(texts: Iterable[str]) -> Samples:
    """Samples of several scrapes (e.g. every router replica), summed where names and labels match."""
    samples: Samples = defaultdict(float)
    for text in texts:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] += s.value
    return dict(samples)


def delta(before: Samples, after: Samples) -> Samples:
    """Counters and histograms as increases from `before` to `after`; gauges as in `after`."""
    return {key: value - before.get(key, 0.0) if key[0].endswith(_CUMULATIVE) else value
            for key, value in after.items()}


def _by(samples: Samples, name: str, *keys: str, **match: str) -> dict[tuple[str, ...], float]:
    """Sum of `name`'s samples grouped by the label `keys`, over those whose labels equal `match`."""
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for (sample, labels), value in samples.items():
        if sample != name:
            continue
        d = dict(labels)
        if all(d.get(k) == v for k, v in match.items()):
            out[tuple(d.get(k, "") for k in keys)] += value
    return dict(out)


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile over cumulative `buckets` (upper bound -> count), linear within a bucket."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank, lower, below = q * buckets[bounds[-1]], 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 0.0)
        lower, below = bound, count
    return lower


def _quantiles(samples: Samples, name: str, service: str) -> dict[str, float | None]:
    buckets = {float(le): v for (le,), v in _by(samples, f"{name}_bucket", "le", service=service).items()}
    return {"p50": _round(quantile(0.5, buckets)), "p95": _round(quantile(0.95, buckets))}


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def _mean(values: list[float]) -> float | None:
    return _round(sum(values) / len(values)) if values else None


def summarize(samples: Samples) -> dict[str, dict]:
    """One summary per service found in the samples."""
    services = sorted({dict(labels).get("service", "") for (_name, labels) in samples} - {"", "none", "all"})
    return {service: _service_summary(samples, service) for service in services}


def _service_summary(samples: Samples, service: str) -> dict:
    codes = _by(samples, "gemma_serving_requests_total", "code", service=service)
    requests = sum(codes.values())
    counted = sum(v for (code,), v in codes.items() if code not in CLIENT_CODES)
    ok = codes.get(("OK",), 0.0)
    seconds = sum(_by(samples, "gemma_serving_request_duration_seconds_sum", service=service).values())
    tokens = sum(_by(samples, "gemma_serving_completion_tokens_total", service=service).values())
    kv = _by(samples, "ray_vllm_kv_cache_usage_perc", "ReplicaId", service=service)
    states = _by(samples, "gemma_serving_service_state", "state", service=service)
    replicas = _by(samples, "gemma_serving_replicas", service=service)
    rss = _by(samples, "ray_gemma_serving_replica_rss_bytes", "ReplicaId", service=service)
    quality_sum = _by(samples, "gemma_serving_quality_score_sum", "scorer", service=service)
    quality_count = _by(samples, "gemma_serving_quality_score_count", "scorer", service=service)
    return {
        "requests": int(requests),
        "success_rate": _round(ok / counted) if counted else None,
        "time_to_first_token_s": _quantiles(samples, "gemma_serving_time_to_first_token_seconds", service),
        "request_duration_s": _quantiles(samples, "gemma_serving_request_duration_seconds", service),
        "tokens_per_second_per_request": _round(tokens / seconds, 2) if seconds else None,
        "completion_tokens": int(tokens),
        "replicas": int(max(replicas.values())) if replicas else None,
        "state": next((s for (s,), v in states.items() if v > 0), None),
        "engine": {
            "kv_cache_usage": _mean(list(kv.values())),
            "requests_running": int(sum(_by(samples, "ray_vllm_num_requests_running", service=service).values())),
            "requests_waiting": int(sum(_by(samples, "ray_vllm_num_requests_waiting", service=service).values())),
            "preemptions": int(sum(_by(samples, "ray_vllm_num_preemptions_total", service=service).values())),
            "replicas_reporting": len(kv),
            "max_replica_rss_bytes": int(max(rss.values())) if rss else None,
        },
        "quality": {scorer: _round(quality_sum.get((scorer,), 0.0) / count)
                    for (scorer,), count in sorted(quality_count.items()) if count},
    }


def scrape(url: str, timeout_s: float = 10.0) -> str:
    """The Prometheus text at `url`."""
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        return reply.read().decode()


def ray_metrics_urls(discovery_file: Path) -> list[str]:
    """The metrics export endpoints of every Ray node, from Ray's Prometheus service-discovery file (written by the
    head's metrics agent, e.g. /tmp/ray/prom_metrics_service_discovery.json); [] when the file is absent."""
    try:
        groups = json.loads(discovery_file.read_text())
    except (FileNotFoundError, ValueError):
        return local_ray_metrics_urls(discovery_file.parent / "session_latest")
    return [f"http://{target}/metrics" for group in groups for target in group.get("targets", [])]


def local_ray_metrics_urls(session_dir: Path) -> list[str]:
    """This machine's Ray nodes' metrics export endpoints, from the ports Ray writes into its session directory
    (`metrics_export_port_<node id>`): the fallback when no dashboard writes the discovery file (`gemma-serving up`
    starts Ray without one)."""
    urls = []
    for port_file in sorted(session_dir.glob("metrics_export_port_*")):
        port = port_file.read_text().strip()
        if port.isdigit():
            urls.append(f"http://127.0.0.1:{port}/metrics")
    return urls


def format_table(summary: dict[str, dict]) -> str:
    """The summary as aligned text lines, one block per service."""
    def fmt(value, unit=""):
        return "-" if value is None else f"{value}{unit}"

    lines = []
    for service, s in summary.items():
        ttft, e2e, engine = s["time_to_first_token_s"], s["request_duration_s"], s["engine"]
        success = None if s["success_rate"] is None else round(100 * s["success_rate"], 2)
        kv = None if engine["kv_cache_usage"] is None else round(100 * engine["kv_cache_usage"], 1)
        rss = engine["max_replica_rss_bytes"]
        lines += [
            f"{service}: state={fmt(s['state'])} replicas={fmt(s['replicas'])} requests={s['requests']} "
            f"success={fmt(success, '%')}",
            f"  ttft p50/p95={fmt(ttft['p50'], 's')}/{fmt(ttft['p95'], 's')}  e2e p50/p95={fmt(e2e['p50'], 's')}/"
            f"{fmt(e2e['p95'], 's')}  tokens/s per request={fmt(s['tokens_per_second_per_request'])}",
            f"  engine: kv cache={fmt(kv, '%')} running={engine['requests_running']} "
            f"waiting={engine['requests_waiting']} preemptions={engine['preemptions']} "
            f"max replica rss={fmt(None if rss is None else round(rss / 2**20), ' MiB')}",
        ]
        if s["quality"]:
            lines.append("  quality: " + " ".join(f"{k}={v}" for k, v in s["quality"].items()))
    return "\n".join(lines) if lines else "no gemma-serving metrics found"

"""Prometheus metrics of the router, with stable documented names (README, Observability).

Each RouterMetrics owns its registry (no process-wide default registry), exposed on the router's scrape port.
Labels: service (text|vision|audio), model (from config), tenant (from config, bounded), code (gRPC status name),
adapter (from config, "" for the base model), scorer (a built-in scorer name), state (a ServiceState value).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
#: Quality scores are 0 (bad) .. 1 (good).
_SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
#: Values of the `state` label of gemma_serving_service_state (router/health.py ServiceState).
SERVICE_STATES = ("starting", "ready", "degraded", "unavailable", "scaled_to_zero")

#: name -> help text; the alert-rule test checks every rule references one of these.
METRIC_NAMES = {
    "gemma_serving_requests_total": "Finished requests by service, model, tenant and gRPC status code.",
    "gemma_serving_request_duration_seconds": "End-to-end request latency at the router.",
    "gemma_serving_time_to_first_token_seconds": "Time from the router receiving a request to its first token.",
    "gemma_serving_inter_token_latency_seconds": "Time between tokens of a stream, per token.",
    "gemma_serving_queue_time_seconds": "Time from the router to the start of work in a deployment replica.",
    "gemma_serving_prompt_tokens_total": "Prompt tokens processed.",
    "gemma_serving_completion_tokens_total": "Tokens generated.",
    "gemma_serving_requests_in_flight": "Requests admitted and not yet finished, per service.",
    "gemma_serving_requests_waiting": "Admitted requests without a first token yet (queued or in prefill).",
    "gemma_serving_replicas": "Running replicas per service, as reported by Ray Serve.",
    "gemma_serving_retries_total": "Requests sent again because their replica was lost before any output.",
    "gemma_serving_service_state": "1 for the service's current health state (ready, degraded, ...), else 0.",
    "gemma_serving_health_probe_seconds": "Latency of the service's last short-generation health probe.",
    "gemma_serving_quality_score": "Quality scores (0 bad .. 1 good) of sampled finished answers, per scorer.",
    "gemma_serving_quality_samples_dropped_total": "Sampled answers not scored because the scoring queue was full.",
}


class RouterMetrics:
    """All router metrics, registered in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r, h = self.registry, METRIC_NAMES
        base = ("service", "model", "tenant")
        self.requests = Counter("gemma_serving_requests", h["gemma_serving_requests_total"], (*base, "code"),
                                registry=r)
        self.duration = Histogram("gemma_serving_request_duration_seconds",
                                  h["gemma_serving_request_duration_seconds"], (*base, "code"),
                                  buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("gemma_serving_time_to_first_token_seconds",
                              h["gemma_serving_time_to_first_token_seconds"], base, buckets=_LATENCY_BUCKETS,
                              registry=r)
        self.itl = Histogram("gemma_serving_inter_token_latency_seconds",
                             h["gemma_serving_inter_token_latency_seconds"], ("service", "model"),
                             buckets=_TOKEN_GAP_BUCKETS, registry=r)
        self.queue = Histogram("gemma_serving_queue_time_seconds", h["gemma_serving_queue_time_seconds"],
                               ("service", "model"), buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("gemma_serving_prompt_tokens", h["gemma_serving_prompt_tokens_total"], base,
                                     registry=r)
        self.completion_tokens = Counter("gemma_serving_completion_tokens",
                                         h["gemma_serving_completion_tokens_total"], base, registry=r)
        self.in_flight = Gauge("gemma_serving_requests_in_flight", h["gemma_serving_requests_in_flight"],
                               ("service",), registry=r)
        self.waiting = Gauge("gemma_serving_requests_waiting", h["gemma_serving_requests_waiting"], ("service",),
                             registry=r)
        self.replicas = Gauge("gemma_serving_replicas", h["gemma_serving_replicas"], ("service",), registry=r)
        self.retries = Counter("gemma_serving_retries", h["gemma_serving_retries_total"], ("service",), registry=r)
        self.service_state = Gauge("gemma_serving_service_state", h["gemma_serving_service_state"],
                                   ("service", "state"), registry=r)
        self.probe_seconds = Gauge("gemma_serving_health_probe_seconds", h["gemma_serving_health_probe_seconds"],
                                   ("service",), registry=r)
        self.quality = Histogram("gemma_serving_quality_score", h["gemma_serving_quality_score"],
                                 ("service", "model", "adapter", "scorer"), buckets=_SCORE_BUCKETS, registry=r)
        self.quality_dropped = Counter("gemma_serving_quality_samples_dropped",
                                       h["gemma_serving_quality_samples_dropped_total"], ("service",), registry=r)

    def record_health(self, states: dict, probe_seconds: dict) -> None:
        """Mirror the services' health states (one-hot over SERVICE_STATES) and last probe latencies."""
        for kind, state in states.items():
            for name in SERVICE_STATES:
                self.service_state.labels(kind.value, name).set(1 if state.value == name else 0)
        for kind, seconds in probe_seconds.items():
            self.probe_seconds.labels(kind.value).set(seconds)

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics on host:port (0 picks a free port); returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server.server_port

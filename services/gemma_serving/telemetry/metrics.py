"""Prometheus metrics of the router, with stable documented names (README, Observability).

Each RouterMetrics owns its registry (no process-wide default registry), exposed on the router's scrape port.
Labels: service (text|vision|audio), model (from config), tenant (from config, bounded), code (gRPC status name).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)

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

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics on host:port (0 picks a free port); returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server.server_port

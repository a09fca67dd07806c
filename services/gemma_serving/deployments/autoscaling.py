"""Autoscaling on engine saturation: a Ray Serve custom autoscaling policy over vLLM's own scheduler statistics.

Each replica reports its engine's KV-cache usage and waiting requests through Serve's `record_autoscaling_stats`
hook (`ModalityDeployment.record_autoscaling_stats`); Serve aggregates them per replica over `look_back_period_s`
and hands them to the policy in `AutoscalingContext.aggregated_metrics`. The policy asks for replicas in proportion
to how far the busiest signal is above its target, the way Serve's default policy does with ongoing requests. Serve
then applies min/max replicas and the upscale/downscale delays (`_apply_autoscaling_config` wraps every policy).

Config: `deployment.autoscaling.policy: engine_saturation` with `saturation: {kv_cache_usage, waiting_requests}`.

Direct calls (deltas/calls.py) reach replicas without a Serve handle call, so Serve's own count of ongoing requests
misses them: each replica reports its direct calls in flight (`direct_in_flight`) and both policies here add them to
Serve's count (`OngoingRequestsPolicy` is Serve's default policy over that sum).
"""

from __future__ import annotations

import math
from typing import Any

import copy

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingContext

#: The custom metric names a replica reports (EngineLoad.as_stats).
KV_CACHE_USAGE = "kv_cache_usage"
WAITING = "waiting"
#: Direct calls in flight on a replica (ModalityDeployment.record_autoscaling_stats).
DIRECT_IN_FLIGHT = "direct_in_flight"

#: Import paths of the policy classes, as Serve's AutoscalingPolicy.policy_function takes them.
POLICY_PATH = "gemma_serving.deployments.autoscaling:EngineSaturationPolicy"
ONGOING_POLICY_PATH = "gemma_serving.deployments.autoscaling:OngoingRequestsPolicy"


def with_direct_calls(ctx: AutoscalingContext) -> AutoscalingContext:
    """`ctx` with the replicas' direct calls in flight added to Serve's ongoing requests."""
    direct = (ctx.aggregated_metrics or {}).get(DIRECT_IN_FLIGHT, {})
    extra = sum(direct.get(r, 0.0) for r in ctx.running_replicas)
    if not extra:
        return ctx
    out = copy.copy(ctx)
    out.__dict__["total_num_requests"] = ctx.total_num_requests + extra  # overrides the cached property
    return out


class OngoingRequestsPolicy:
    """Serve's default policy (ongoing requests against target_ongoing_requests), direct calls counted."""

    def __call__(self, ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
        return replica_queue_length_autoscaling_policy(with_direct_calls(ctx))


class EngineSaturationPolicy:
    """Replicas wanted = replicas x max(mean KV usage / target, waiting per replica / target).

    Waiting counts the engines' waiting requests plus the requests Serve queues at handles (they have not reached an
    engine yet). While no replica reports engine statistics (starting, or an engine without them) the decision is
    Serve's default, ongoing requests against `target_ongoing_requests`.
    """

    def __init__(self, kv_cache_usage: float = 0.8, waiting_requests: float = 2.0) -> None:
        self.target_kv_cache_usage = kv_cache_usage
        self.target_waiting_requests = waiting_requests

    def __call__(self, ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
        metrics = ctx.aggregated_metrics or {}
        kv = metrics.get(KV_CACHE_USAGE, {})
        reporting = [r for r in ctx.running_replicas if r in kv]
        if ctx.current_num_replicas == 0 or not reporting:
            return replica_queue_length_autoscaling_policy(with_direct_calls(ctx))
        mean_kv = sum(kv[r] for r in reporting) / len(reporting)
        waiting = sum(metrics.get(WAITING, {}).get(r, 0.0) for r in reporting) + (ctx.total_queued_requests or 0.0)
        ratio = max(mean_kv / self.target_kv_cache_usage,
                    waiting / ctx.current_num_replicas / self.target_waiting_requests)
        desired = ctx.current_num_replicas * ratio
        return (desired if math.isfinite(desired) else ctx.current_num_replicas), {}


def ongoing_policy_option() -> dict[str, Any]:
    """The `autoscaling_config.policy` Serve option for ongoing requests with direct calls counted."""
    return {"policy_function": ONGOING_POLICY_PATH}


def policy_option(targets: Any) -> dict[str, Any]:
    """The `autoscaling_config.policy` Serve option for the engine_saturation policy with `targets`
    (a SaturationTargets)."""
    return {"policy_function": POLICY_PATH,
            "policy_kwargs": {"kv_cache_usage": targets.kv_cache_usage, "waiting_requests": targets.waiting_requests}}

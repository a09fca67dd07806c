"""Autoscaling on engine saturation: the config choice, the Serve option it becomes, and the policy's decisions on
Serve's own AutoscalingContext (nothing started)."""

from __future__ import annotations

import pytest
from gemma_serving.app import deployment_options
from gemma_serving.config import ServiceConfig, ServiceKind
from gemma_serving.deployments.autoscaling import (
    DIRECT_IN_FLIGHT,
    KV_CACHE_USAGE,
    WAITING,
    EngineSaturationPolicy,
    OngoingRequestsPolicy,
)
from gemma_serving.engines.engine_load import EngineLoadTracker
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

DEPLOYMENT = DeploymentID(name="text", app_name="gemma")


def service(**autoscaling):
    return ServiceConfig.model_validate({"model": {"name": "m", "source": "/m"},
                                         "deployment": {"autoscaling": {"max_replicas": 4, **autoscaling}}})


def context(kv: list[float] | None, waiting: list[float] | None = None, *, ongoing: float = 0, queued: float = 0,
            replicas: int | None = None) -> AutoscalingContext:
    count = replicas if replicas is not None else len(kv or [0])
    ids = [ReplicaID(unique_id=f"r{i}", deployment_id=DEPLOYMENT) for i in range(count)]
    metrics = {}
    if kv is not None:
        metrics[KV_CACHE_USAGE] = dict(zip(ids, kv))
        metrics[WAITING] = dict(zip(ids, waiting or [0.0] * len(kv)))
    return AutoscalingContext(
        deployment_id=DEPLOYMENT, deployment_name="text", app_name="gemma", current_num_replicas=count,
        target_num_replicas=count, running_replicas=ids, total_num_requests=ongoing, total_queued_requests=queued,
        aggregated_metrics=metrics, raw_metrics={}, capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=4, policy_state={}, last_scale_up_time=None, last_scale_down_time=None,
        current_time=None, config=AutoscalingConfig(min_replicas=1, max_replicas=4, target_ongoing_requests=8),
    )


def test_default_is_serves_ongoing_requests_policy_with_direct_calls_counted():
    opts = deployment_options(ServiceKind.TEXT, service())
    policy = opts["autoscaling_config"]["policy"]
    assert AutoscalingConfig(**opts["autoscaling_config"]).policy.get_policy().__name__ == "OngoingRequestsPolicy"
    assert "policy_kwargs" not in policy


def test_engine_saturation_becomes_a_serve_policy_that_serve_accepts_and_resolves():
    opts = deployment_options(ServiceKind.TEXT, service(policy="engine_saturation",
                                                        saturation={"kv_cache_usage": 0.5, "waiting_requests": 4}))
    policy = opts["autoscaling_config"]["policy"]
    assert policy["policy_kwargs"] == {"kv_cache_usage": 0.5, "waiting_requests": 4}
    config = AutoscalingConfig(**opts["autoscaling_config"])  # Serve's own validation and pickling of the policy
    resolved = config.policy.get_policy()
    assert resolved.__name__ == "EngineSaturationPolicy"
    assert resolved(**policy["policy_kwargs"]).target_kv_cache_usage == 0.5


@pytest.mark.parametrize("kv,waiting,queued,expected", [
    ([0.96, 0.96], [0, 0], 0, 2.4),   # KV cache nearly full on both replicas: 2 x 0.96 / 0.8
    ([0.4, 0.4], [0, 0], 0, 1.0),     # half the target: half the replicas
    ([0.2, 0.2], [6, 2], 0, 4.0),     # 4 waiting per replica against a target of 2
    ([0.2, 0.2], [0, 0], 8, 4.0),     # requests queued at Serve's handles count as waiting
])
def test_replicas_follow_the_busiest_engine_signal(kv, waiting, queued, expected):
    desired, _state = EngineSaturationPolicy(kv_cache_usage=0.8, waiting_requests=2)(
        context(kv, waiting, queued=queued))
    assert desired == pytest.approx(expected)


def test_without_engine_reports_the_policy_is_serves_default():
    # No custom metrics yet (replicas starting): 32 ongoing against a target of 8 on 2 replicas -> 4.
    desired, _ = EngineSaturationPolicy()(context(None, ongoing=32, replicas=2))
    assert desired == pytest.approx(4.0)


def test_load_tracker_reports_the_metric_names_the_policy_reads():
    tracker = EngineLoadTracker()
    assert tracker.latest is None
    tracker.update(running=3, waiting=5, kv_cache_usage=0.7)
    stats = tracker.latest.as_stats()
    assert stats[KV_CACHE_USAGE] == 0.7 and stats[WAITING] == 5.0 and stats["running"] == 3.0


def test_direct_calls_count_as_ongoing_requests():
    # 8 ongoing at Serve's handles + 24 direct calls the replicas report, target 8 on 2 replicas -> 4 replicas.
    ctx = context(None, ongoing=8, replicas=2)
    ctx.aggregated_metrics[DIRECT_IN_FLIGHT] = {r: 12.0 for r in ctx.running_replicas}
    desired, _ = OngoingRequestsPolicy()(ctx)
    assert desired == pytest.approx(4.0)
    # Without them Serve's count alone: 8 / 8 -> 1 replica.
    assert OngoingRequestsPolicy()(context(None, ongoing=8, replicas=2))[0] == pytest.approx(1.0)


def test_engine_saturation_fallback_counts_direct_calls_too():
    ctx = context(None, ongoing=0, replicas=2)
    ctx.aggregated_metrics[DIRECT_IN_FLIGHT] = {r: 16.0 for r in ctx.running_replicas}
    desired, _ = EngineSaturationPolicy()(ctx)
    assert desired == pytest.approx(4.0)

from gemma_serving.app import deployment_options
from gemma_serving.config import ServiceConfig, ServiceKind


def service(**deployment):
    return ServiceConfig.model_validate(
        {"model": {"name": "m", "source": "/m", "engine": {"cpu_kv_cache_gib": 3}}, "deployment": deployment}
    )


def test_autoscaling_and_concurrency_come_from_config():
    opts = deployment_options(
        ServiceKind.VISION,
        service(autoscaling={"min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 2,
                             "upscale_delay_s": 1, "downscale_delay_s": 5},
                max_ongoing_requests=16, max_queued_requests=32),
    )
    assert opts["name"] == "vision"
    assert opts["autoscaling_config"] == {
        "min_replicas": 0, "initial_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 2,
        "upscale_delay_s": 1, "downscale_delay_s": 5,
        # Serve's default policy, with the direct calls Serve does not see counted (deltas/calls.py)
        "policy": {"policy_function": "gemma_serving.deployments.autoscaling:OngoingRequestsPolicy"},
    }
    assert (opts["max_ongoing_requests"], opts["max_queued_requests"]) == (16, 32)


def test_without_direct_calls_serve_keeps_its_default_policy():
    opts = deployment_options(ServiceKind.TEXT, service(direct_calls=False))
    assert "policy" not in opts["autoscaling_config"]


def test_text_starts_with_at_least_one_replica():
    opts = deployment_options(ServiceKind.TEXT, service(autoscaling={"min_replicas": 0, "max_replicas": 2}))
    assert opts["autoscaling_config"]["initial_replicas"] == 1


def test_accelerator_becomes_a_resource_request_and_env_reaches_the_replica():
    opts = deployment_options(ServiceKind.AUDIO, service(num_gpus=1, accelerator_type="nvidia-l4", env={"A": "b"}))
    actor = opts["ray_actor_options"]
    assert actor["num_gpus"] == 1
    assert actor["resources"] == {"accelerator:nvidia-l4": 0.001}
    assert actor["runtime_env"]["env_vars"] == {"RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
                                                "VLLM_CPU_KVCACHE_SPACE": "3", "A": "b"}


def test_serve_metrics_are_handed_to_ray_once_a_second_in_every_replica_unless_a_service_says_otherwise():
    from gemma_serving.app import build_app
    from gemma_serving.config import load_config

    router = build_app(load_config())._bound_deployment
    assert router.ray_actor_options["runtime_env"]["env_vars"]["RAY_SERVE_METRICS_EXPORT_INTERVAL_MS"] == "1000"
    opts = deployment_options(ServiceKind.TEXT, service(env={"RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "100"}))
    assert opts["ray_actor_options"]["runtime_env"]["env_vars"]["RAY_SERVE_METRICS_EXPORT_INTERVAL_MS"] == "100"


def test_no_accelerator_means_no_resource_constraint():
    assert "resources" not in deployment_options(ServiceKind.TEXT, service())["ray_actor_options"]


def test_router_resources_pin_router_replicas():
    from gemma_serving.app import build_app
    from gemma_serving.config import load_config, parse_config

    data = load_config().model_dump(mode="json")
    data["router"]["resources"] = {"gemma-router": 0.001}
    router = build_app(parse_config(data))._bound_deployment  # the app's ingress deployment
    assert router.name == "router"
    assert router.ray_actor_options["resources"] == {"gemma-router": 0.001}


def test_max_wait_for_replica_is_validated():
    import pytest
    from pydantic import ValidationError

    assert service().deployment.max_wait_for_replica_s == 300
    with pytest.raises(ValidationError, match="max_wait_for_replica_s"):
        service(max_wait_for_replica_s=0)

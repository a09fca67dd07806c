"""Building the Ray Serve application from the config.

`app_builder` is what a RayService `serveConfigV2` import_path points at (`gemma_serving.app:app_builder`), with
`args: {config: {...}}` (the same schema as the YAML file) or `args: {config_path: /etc/gemma/config.yaml}`.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from gemma_serving.config import ServiceConfig, ServiceKind, ServingConfig, load_config, parse_config
from gemma_serving.deployments.autoscaling import ongoing_policy_option, policy_option
from gemma_serving.deployments.modality import ModalityDeployment, resolve_checkpoint, vllm_engine_factory
from gemma_serving.router.server import RouterDeployment

#: Ray resource a worker node advertises for its accelerator, e.g. {"accelerator:nvidia-l4": 1}.
ACCELERATOR_RESOURCE_PREFIX = "accelerator:"
#: Ray Serve settings in every replica of the app (router and services; a service's `deployment.env` overrides).
#: Serve hands its cached request metrics to Ray's metric API every RAY_SERVE_METRICS_EXPORT_INTERVAL_MS, 100 ms by
#: default: ten wakes a second of every replica and of every handle a router holds, busy or idle. Ray reports
#: metrics onwards every 10 s (its metrics_report_interval_ms), so once a second changes nothing a scrape can see,
#: and takes ~2 ms of CPU per second off each idle replica (README, the token path: idle floors).
SERVE_REPLICA_ENV = {"RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000"}


def deployment_options(kind: ServiceKind, service: ServiceConfig) -> dict[str, Any]:
    """Ray Serve options of one service's deployment, from its config."""
    d = service.deployment
    a = d.autoscaling
    actor: dict[str, Any] = {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus}
    if d.accelerator_type:
        # Place replicas only on nodes of that accelerator (worker groups advertise the resource).
        actor["resources"] = {f"{ACCELERATOR_RESOURCE_PREFIX}{d.accelerator_type}": 0.001}
    env = {**SERVE_REPLICA_ENV, "VLLM_CPU_KVCACHE_SPACE": str(service.model.engine.cpu_kv_cache_gib), **d.env}
    actor["runtime_env"] = {"env_vars": env}
    autoscaling = {
        "min_replicas": a.min_replicas,
        "initial_replicas": max(a.min_replicas, 1) if kind is ServiceKind.TEXT else a.min_replicas,
        "max_replicas": a.max_replicas,
        "target_ongoing_requests": a.target_ongoing_requests,
        "upscale_delay_s": a.upscale_delay_s,
        "downscale_delay_s": a.downscale_delay_s,
    }
    if a.policy == "engine_saturation":
        autoscaling["policy"] = policy_option(a.saturation)
    elif d.direct_calls:  # Serve's default policy, with the direct calls it does not see counted
        autoscaling["policy"] = ongoing_policy_option()
    return {
        "name": f"{kind.value}",
        "max_ongoing_requests": d.max_ongoing_requests,
        "max_queued_requests": d.max_queued_requests,
        "autoscaling_config": autoscaling,
        "ray_actor_options": actor,
        # vLLM engines take tens of seconds (minutes for real checkpoints) to load.
        "health_check_timeout_s": 60,
        "graceful_shutdown_timeout_s": 30,
    }


def replica_states(app_name: str) -> dict[str, dict[str, int]]:
    """Replica counts by state (RUNNING, STARTING, ...) of each deployment of an app, from one Serve status read."""
    app = serve.status().applications.get(app_name)
    return {name: dict(d.replica_states) for name, d in app.deployments.items()} if app else {}


def build_app(
    config: ServingConfig, *, engine_factory=vllm_engine_factory, checkpoint_resolver=resolve_checkpoint
) -> Application:
    """The router bound to one ModalityDeployment per configured service (factories injectable for tests)."""
    handles = {}
    for kind, service in config.services.items():
        deployment = serve.deployment(ModalityDeployment).options(**deployment_options(kind, service))
        handles[kind.value] = deployment.bind(
            kind.value,
            service.model_dump(mode="json"),
            telemetry=config.telemetry.model_dump(mode="json"),
            engine_factory=engine_factory,
            checkpoint_resolver=checkpoint_resolver,
        )
    router = serve.deployment(RouterDeployment).options(
        name="router",
        num_replicas=config.router.num_replicas,
        # The router is I/O bound: Serve's default of 5 ongoing requests would throttle every service behind it.
        max_ongoing_requests=config.router.max_concurrent_rpcs,
        ray_actor_options={"num_cpus": config.router.num_cpus, "resources": dict(config.router.resources),
                           "runtime_env": {"env_vars": dict(SERVE_REPLICA_ENV)}},
        graceful_shutdown_timeout_s=config.router.grace_period_s + 5,
    )
    return router.bind(config.model_dump(mode="json"), handles)


def app_builder(args: dict[str, Any]) -> Application:
    """Serve application builder for `serve run` / RayService: args hold `config` or `config_path`."""
    if "config" in args:
        config = parse_config(args["config"])
    else:
        config = load_config(args.get("config_path"))
    return build_app(config)

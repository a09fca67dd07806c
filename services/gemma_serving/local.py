"""Running the platform on this machine: a detached local Ray instance with the Serve app on it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc

from gemma_serving.config import ServingConfig

#: Not Ray's default 6379, so a developer's own Ray cluster is left alone.
LOCAL_RAY_PORT = 6390


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def start_ray() -> str:
    """Start (or reuse) the local head node; returns its address."""
    address = f"127.0.0.1:{LOCAL_RAY_PORT}"
    probe = subprocess.run([_ray_cli(), "status", f"--address={address}"], capture_output=True, env=_env())
    if probe.returncode != 0:
        print(f"starting Ray on {address} ...", flush=True)
        subprocess.run(
            [_ray_cli(), "start", "--head", f"--port={LOCAL_RAY_PORT}", "--node-ip-address=127.0.0.1",
             "--include-dashboard=false", "--disable-usage-stats"],
            check=True, env=_env(), stdout=subprocess.DEVNULL,
        )
    return address


def wait_for_router(target: str, timeout_s: float) -> None:
    """Block until the router's gRPC health check answers SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with grpc.insecure_channel(target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"router at {target} not serving after {timeout_s:.0f} s")
        time.sleep(1)


def up(config: ServingConfig, config_path: Path) -> None:
    """Start Ray and deploy the app; returns once the router serves."""
    import ray
    from ray import serve

    from gemma_serving.app import build_app

    began = time.monotonic()
    address = start_ray()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    print(f"deploying app '{config.app_name}' from {config_path} (engines load in 30-90 s on CPU) ...", flush=True)
    serve.run(build_app(config), name=config.app_name, route_prefix=None, blocking=False)
    target = f"{config.router.host}:{config.router.port}"
    wait_for_router(target, timeout_s=900)
    _wait_for_app_running(config.app_name, timeout_s=900)
    print(f"gemma-serving is up on {target} after {time.monotonic() - began:.0f} s", flush=True)


def _wait_for_app_running(name: str, timeout_s: float) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(name)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"app {name} is {status.status}: {status.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"app {name} not running after {timeout_s:.0f} s")
        time.sleep(2)


def down() -> None:
    """Stop the app and the local Ray instance."""
    subprocess.run([_ray_cli(), "stop"], check=False, env=_env())


def status(config: ServingConfig) -> int:
    """Print Serve's view of the app and whether the router answers; returns an exit code."""
    import ray
    from ray import serve

    try:
        ray.init(address=f"127.0.0.1:{LOCAL_RAY_PORT}", logging_level="WARNING", log_to_driver=False)
    except ConnectionError:
        print("not running (no local Ray instance)")
        return 1
    app = serve.status().applications.get(config.app_name)
    if app is None:
        print(f"app {config.app_name}: not deployed")
        return 1
    print(f"app {config.app_name}: {app.status}")
    for name, dep in app.deployments.items():
        print(f"  {name}: {dep.status} replicas={dict(dep.replica_states)}")
    target = f"{config.router.host}:{config.router.port}"
    try:
        wait_for_router(target, timeout_s=3)
        print(f"router {target}: SERVING")
        return 0
    except TimeoutError:
        print(f"router {target}: not serving")
        return 1

"""One session for every integration test: a local Ray cluster, the Serve app with real vLLM engines on the tiny
local Gemma checkpoints, and the gRPC router on a free loopback port."""

from __future__ import annotations

import os
import socket
import time

import grpc
import pytest
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.config import load_config

#: Facts about the session's platform, printed in pytest's terminal summary (engine start times).
PLATFORM_FACTS: dict[str, str] = {}


def pytest_terminal_summary(terminalreporter):
    if PLATFORM_FACTS:
        terminalreporter.section("platform")
        for key, value in PLATFORM_FACTS.items():
            terminalreporter.write_line(f"{key}: {value}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def otlp_receiver():
    from tests.otlp_receiver import OtlpTraceReceiver

    receiver = OtlpTraceReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def platform_config(otlp_receiver):
    data = load_config().model_dump(mode="json")
    data["router"]["port"] = 0
    data["router"]["http_port"] = 0
    # Every span exported quickly to the loopback receiver; metrics on a free port.
    data["telemetry"] = {"otlp_endpoint": otlp_receiver.endpoint, "sampling_ratio": 1.0, "export_delay_ms": 200,
                         "metrics_port": 0}
    # Small admission limits on text so the overload test can exceed them: 64 in the replica + 16 queued per router.
    data["services"]["text"]["deployment"].update(max_ongoing_requests=64, max_queued_requests=16)
    from gemma_serving.config import parse_config

    return parse_config(data)


@pytest.fixture(scope="session")
def platform(platform_config):
    """Start Ray + Serve + the app once; yields (router port, Serve app handle, engine facts)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray
    from gemma_serving.app import build_app
    from gemma_serving.models import build_models
    from ray import serve

    began = time.monotonic()
    build_models(progress=lambda msg: print(f"[build-models] {msg}", flush=True))
    models_ready = time.monotonic() - began
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})
    handle = serve.run(build_app(platform_config), name=platform_config.app_name, route_prefix=None)
    port = handle.port.remote().result()
    facts = {
        kind: serve.get_deployment_handle(kind, platform_config.app_name).describe.remote().result()
        for kind in ("text", "vision", "audio")
    }
    for kind, fact in facts.items():
        PLATFORM_FACTS[f"{kind} engine start ({fact['model']})"] = f"{fact['engine_start_seconds']:.1f} s"
    PLATFORM_FACTS["models built or found"] = f"{models_ready:.1f} s"
    PLATFORM_FACTS["platform ready (Ray + Serve + 3 engines, started together)"] = f"{time.monotonic() - began:.1f} s"
    yield port, handle, facts
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def stub(platform):
    port = platform[0]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.InferenceStub(channel)


@pytest.fixture(scope="session")
def describe(platform, platform_config):
    """Calls ModalityDeployment.describe() on one service."""
    from ray import serve

    def call(kind: str) -> dict:
        return serve.get_deployment_handle(kind, platform_config.app_name).describe.remote().result()

    return call

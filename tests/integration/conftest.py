"""One platform for every integration test: the Serve app with real vLLM engines on the tiny local Gemma checkpoints
and the gRPC router on a free loopback port, on the session's Ray cluster (tests/conftest.py). The app is deleted
when the package is done, so the scaling tests that follow have the cluster to themselves."""

from __future__ import annotations

import time

import grpc
import pytest
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.config import load_config

from tests.session_facts import SESSION_FACTS as PLATFORM_FACTS


@pytest.fixture(scope="session")
def otlp_receiver():
    from tests.otlp_receiver import OtlpTraceReceiver

    receiver = OtlpTraceReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="package")
def platform_config(otlp_receiver, tmp_path_factory):
    data = load_config().model_dump(mode="json")
    # A registry of this session's own (test_finetune registers into it), not the demo's in the home directory.
    data["services"]["text"]["model"]["adapter_registry"] = str(tmp_path_factory.mktemp("adapter-registry"))
    data["router"]["port"] = 0
    data["router"]["http_port"] = 0
    # Every span exported quickly to the loopback receiver; metrics on a free port.
    data["telemetry"] = {"otlp_endpoint": otlp_receiver.endpoint, "sampling_ratio": 1.0, "export_delay_ms": 200,
                         "metrics_port": 0,
                         # Quality scores of every tiny-lora answer, none of the base model's (test_engine_observability).
                         "quality": {"sample_ratio_by_model": {"gemma-3-tiny:tiny-lora": 1},
                                     "scorers": ["repetition", "length", "json_valid"]}}
    # Small admission limits on text so the overload test can exceed them: 64 in the replica + 16 queued per router.
    data["services"]["text"]["deployment"].update(max_ongoing_requests=64, max_queued_requests=16)
    from gemma_serving.config import parse_config

    return parse_config(data)


@pytest.fixture(scope="package")
def platform(ray_cluster, platform_config):
    """Deploy the app once; yields (router port, Serve app handle, engine facts)."""
    from gemma_serving.app import build_app
    from gemma_serving.models import build_models
    from ray import serve

    began = time.monotonic()
    build_models(progress=lambda msg: print(f"[build-models] {msg}", flush=True))
    models_ready = time.monotonic() - began
    handle = serve.run(build_app(platform_config), name=platform_config.app_name, route_prefix=None)
    port = handle.port.remote().result()
    facts = {
        kind: serve.get_deployment_handle(kind, platform_config.app_name).describe.remote().result()
        for kind in ("text", "vision", "audio")
    }
    for kind, fact in facts.items():
        PLATFORM_FACTS[f"{kind} engine start ({fact['model']})"] = f"{fact['engine_start_seconds']:.1f} s"
    PLATFORM_FACTS["models built or found"] = f"{models_ready:.1f} s"
    PLATFORM_FACTS["platform ready (3 engines, started together)"] = f"{time.monotonic() - began:.1f} s"
    yield port, handle, facts
    serve.delete(platform_config.app_name)


@pytest.fixture(scope="package")
def stub(platform):
    port = platform[0]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.InferenceStub(channel)


@pytest.fixture(scope="package")
def describe(platform, platform_config):
    """Calls ModalityDeployment.describe() on one service."""
    from ray import serve

    def call(kind: str) -> dict:
        return serve.get_deployment_handle(kind, platform_config.app_name).describe.remote().result()

    return call

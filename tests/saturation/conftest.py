"""An app whose text service scales on engine saturation (`autoscaling.policy: engine_saturation`), on the session's
multi-node cluster: text pinned to the two `nvidia-l4` workers (1-2 replicas), with a KV cache so small that a few
streams fill it, and targets chosen so that only the KV-cache signal can scale it: Serve's ongoing-requests target
is far above the load, the waiting-requests target too. Runs after tests/integration (its app is deleted) and before
tests/scaling, so the L4 workers are free."""

from __future__ import annotations

import time

import pytest
from gemma_serving.config import parse_config
from gemma_serving.local_cluster import ClusterView, pinned_config

from tests.session_facts import SESSION_FACTS

APP = "saturation"
#: KV-cache usage the policy aims at; the load below fills the cache to ~100 %.
KV_TARGET = 0.5
#: Probe generations slower than this are DEGRADED (a 4-token probe takes ~0.1 s on an idle tiny engine).
DEGRADED_AFTER_S = 0.5


def saturation_config():
    # A long downscale delay keeps both replicas while the test reads the loaded platform.
    data = pinned_config(APP, text_max_replicas=2, target_ongoing_requests=1000, upscale_delay_s=2,
                         text_downscale_delay_s=600).model_dump(mode="json")
    del data["services"]["audio"]
    text = data["services"]["text"]
    # 64 blocks of 32 tokens, shared by the two KV-cache groups of Gemma 3 (sliding window, full attention): vLLM on
    # CPU then fits one 480-token request, so max_model_len 448; 12 streams of
    # ~230 tokens cannot all fit.
    text["model"].update(max_output_tokens=256, default_max_tokens=64)
    text["model"]["engine"].update(max_model_len=448, max_num_seqs=12,
                                   extra_args={"block_size": 32, "num_gpu_blocks_override": 64})
    text["deployment"]["autoscaling"].update(policy="engine_saturation",
                                             saturation={"kv_cache_usage": KV_TARGET, "waiting_requests": 1000})
    text["deployment"]["health_probe"] = {"interval_s": 1, "degraded_after_s": DEGRADED_AFTER_S, "timeout_s": 60}
    return parse_config(data)


@pytest.fixture(scope="package")
def saturation_platform(ray_cluster):
    """Deploy the app; yields (router target, ClusterView, config). Text starts with one replica."""
    from gemma_serving.app import build_app
    from ray import serve

    config = saturation_config()
    began = time.monotonic()
    handle = serve.run(build_app(config), name=APP, route_prefix=None)
    port = handle.port.remote().result()
    view = ClusterView(ray_cluster, APP, handle.metrics_port.remote().result())
    SESSION_FACTS["saturation app ready (router + 1 text engine, 2048-token KV cache)"] = \
        f"{time.monotonic() - began:.1f} s"
    yield f"127.0.0.1:{port}", view, config
    serve.delete(APP)

"""`gemma-serving up` -> `status` -> `generate` -> a second `up` -> `down` on a platform with TLS and API keys: the
real CLI in subprocesses, the real platform (Ray + Serve + a vLLM CPU engine on the tiny text model) started by `up`.

Runs its own Ray instance (the one `gemma-serving serve` owns), so it lives outside tests/integration: it never uses
the session cluster, and in a full run it comes before it (directory order) and is stopped by `down` before that
cluster starts. Marked slow (the engine starts in 30-100 s on CPU). On its own: `pytest tests/cli`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from gemma_serving.router.auth import new_api_key

from tests.conftest import free_port
from tests.unit.test_tls import _cert

pytestmark = pytest.mark.slow


def _cli(*args: str, env: dict, timeout_s: float = 960) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gemma_serving.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout_s)


@pytest.fixture(scope="module")
def tls_platform_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-tls")
    ca_key, ca_name, ca_pem, _ = _cert("test-ca", ca=True)
    _, _, server_pem, server_key = _cert("localhost", ca_key, ca_name, san="localhost")
    (d / "ca.pem").write_bytes(ca_pem)
    (d / "server.pem").write_bytes(server_pem)
    (d / "server_key.pem").write_bytes(server_key)
    key, key_hash = new_api_key()
    config = {
        "router": {"host": "127.0.0.1", "port": free_port(), "http_port": free_port()},
        "telemetry": {"metrics_port": free_port()},
        "security": {"auth": "api_key", "tls": {"cert_file": str(d / "server.pem"),
                                                 "key_file": str(d / "server_key.pem")},
                     "tenants": [{"id": "cli", "api_key_hashes": [key_hash]}]},
        "services": {"text": {
            "model": {"name": "gemma-3-tiny", "source": "tiny://text", "default_max_tokens": 16,
                      "max_output_tokens": 64, "engine": {"max_model_len": 512, "dtype": "float32"}},
            "deployment": {"autoscaling": {"min_replicas": 1, "max_replicas": 1}, "num_cpus": 0.25}}},
    }
    (d / "platform.yaml").write_text(yaml.safe_dump(config))
    return d, key


def test_up_status_down_with_tls_and_api_keys(tls_platform_files, tmp_path: Path):
    d, key = tls_platform_files
    config = str(d / "platform.yaml")
    env = {**os.environ, "GEMMA_SERVING_RUN_DIR": str(tmp_path / "run"), "GEMMA_SERVING_API_KEY": key,
           "GEMMA_SERVING_TLS_CA": str(d / "ca.pem")}
    assert _cli("build-models", env=env).returncode == 0
    began = time.monotonic()
    started = _cli("up", "--config", config, env=env)
    up_s = time.monotonic() - began
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        assert "gemma-serving is up on 127.0.0.1" in started.stdout
        status = _cli("status", "--config", config, env=env, timeout_s=60)
        assert status.returncode == 0 and "SERVING (TLS)" in status.stdout and "gemma-3-tiny" in status.stdout
        answer = _cli("generate", "Hello", "--config", config, "--max-tokens", "4", env=env, timeout_s=120)
        assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr
        again = _cli("up", "--config", config, env=env, timeout_s=60)  # a second platform is not started
        assert again.returncode == 0 and "already up" in again.stdout
        keyless = {k: v for k, v in env.items() if k != "GEMMA_SERVING_API_KEY"}
        refused = _cli("generate", "Hello", "--config", config, env=keyless, timeout_s=60)
        assert refused.returncode == 1 and "GEMMA_SERVING_API_KEY" in refused.stderr
    finally:
        stopped = _cli("down", "--config", config, env=env, timeout_s=120)
    assert stopped.returncode == 0 and "gemma-serving stopped" in stopped.stdout
    after = _cli("status", "--config", config, env=env, timeout_s=60)
    assert after.returncode == 1 and "not serving" in after.stdout
    print(f"\n`up` with TLS + API keys: serving after {up_s:.1f} s")

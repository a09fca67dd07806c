"""The CLI reaches a TLS / mTLS platform with API keys the way its config says (real routers on loopback, real
certificates), and `up` never starts a second platform."""

import asyncio
import os
import subprocess

import grpc
import pytest
import yaml
from gemma_serving import cli, local
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client import GemmaClient
from gemma_serving.client.connection import connection_for
from gemma_serving.config import parse_config
from gemma_serving.errors import InvalidRequest
from gemma_serving.router.auth import new_api_key

from tests.unit.conftest import CONFIG
from tests.unit.test_tls import pki  # noqa: F401  (the module-scoped certificates fixture)

KEY, KEY_HASH = new_api_key()


def _security(d, *, mtls: bool) -> dict:
    tls = {"cert_file": str(d / "server.pem"), "key_file": str(d / "server_key.pem")}
    if mtls:
        tls.update(client_ca_file=str(d / "ca.pem"), require_client_cert=True)
    return {"auth": "api_key", "tls": tls, "tenants": [
        {"id": "web", "api_key_hashes": [KEY_HASH], "client_cert_subjects": ["billing-service"] if mtls else []}]}


async def _platform(make_router, tmp_path, d, *, mtls=False):
    """A TLS router with API keys, and the config file that describes it (its real port)."""
    overrides = {"router": {"host": "127.0.0.1", "port": 0}, "security": _security(d, mtls=mtls)}
    router, _ = await make_router(overrides)
    data = {**CONFIG, **overrides, "router": {"host": "127.0.0.1", "port": router.port}}
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_config(data), path


async def test_status_and_generate_over_tls_with_a_key_from_the_environment(make_router, tmp_path, pki, capsys):  # noqa: F811
    d, _ = pki
    config, path = await _platform(make_router, tmp_path, d)
    env = {"GEMMA_SERVING_API_KEY": KEY, "GEMMA_SERVING_TLS_CA": str(d / "ca.pem")}
    connection = connection_for(config, env=env)
    assert connection.tls and connection.server_name == "localhost"  # the certificate's name, not 127.0.0.1
    assert await asyncio.to_thread(local.router_serving, connection)
    assert await asyncio.to_thread(local.status, connection) == 0
    assert "text-model: service=text" in capsys.readouterr().out
    os.environ.update(env)
    try:
        rc = await asyncio.to_thread(cli.main, ["generate", "hi", "--config", str(path), "--max-tokens", "2"])
        assert rc == 0 and "word0 word1" in capsys.readouterr().out
        del os.environ["GEMMA_SERVING_API_KEY"]
        rc = await asyncio.to_thread(cli.main, ["generate", "hi", "--config", str(path)])
        assert rc == 1 and "set GEMMA_SERVING_API_KEY" in capsys.readouterr().err
    finally:
        for name in env:
            os.environ.pop(name, None)


async def test_mtls_needs_and_uses_a_client_certificate(make_router, tmp_path, pki):  # noqa: F811
    d, _ = pki
    config, _ = await _platform(make_router, tmp_path, d, mtls=True)
    with pytest.raises(InvalidRequest, match="set GEMMA_SERVING_TLS_CLIENT_CERT and GEMMA_SERVING_TLS_CLIENT_KEY"):
        connection_for(config, env={})
    connection = connection_for(config, env={"GEMMA_SERVING_TLS_CA": str(d / "ca.pem"),
                                             "GEMMA_SERVING_TLS_CLIENT_CERT": str(d / "client.pem"),
                                             "GEMMA_SERVING_TLS_CLIENT_KEY": str(d / "client_key.pem")})
    assert await asyncio.to_thread(local.router_serving, connection)

    def usage():
        with GemmaClient(connection.target, **connection.client_options()) as client:
            return client.stub.GetUsage(pb.GetUsageRequest(), timeout=5).tenant

    assert await asyncio.to_thread(usage) == "web"


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMMA_SERVING_RUN_DIR", str(tmp_path / "run"))

    def never(*args, **kwargs):
        raise AssertionError("up must not start a platform here")

    monkeypatch.setattr(subprocess, "Popen", never)
    return tmp_path / "run"


async def test_up_refuses_a_second_platform(make_router, tmp_path, pki, run_dir):  # noqa: F811
    d, _ = pki
    config, path = await _platform(make_router, tmp_path, d)
    serving = connection_for(config, env={"GEMMA_SERVING_TLS_CA": str(d / "ca.pem")})
    # Something serves on the configured address, started elsewhere: refused.
    with pytest.raises(RuntimeError, match="already serves on 127.0.0.1"):
        await asyncio.to_thread(local.up, config, path, serving)
    # A platform of this run directory is still starting (its process lives, its router does not answer yet).
    local.run_dir().joinpath("serve.pid").write_text(str(os.getpid()))
    starting = connection_for(parse_config({**CONFIG, "router": {"port": 1}}), env={})
    with pytest.raises(RuntimeError, match=f"already running \\(pid {os.getpid()}\\) but 127.0.0.1:1 is not serving"):
        await asyncio.to_thread(local.up, config, path, starting)
    # Serving: `up` says so and starts nothing.
    await asyncio.to_thread(local.up, config, path, serving)


def test_two_ups_cannot_both_claim_the_pid_file(run_dir):
    local._claim_pid_file()
    with pytest.raises(RuntimeError, match="already starting or running"):
        local._claim_pid_file()


def test_a_stale_pid_file_is_replaced(run_dir):
    local.run_dir().joinpath("serve.pid").write_text("999999999")  # no such process
    assert local._claim_pid_file().read_text() == str(os.getpid())


def test_plaintext_config_needs_no_certificates():
    connection = connection_for(parse_config(CONFIG), env={"GEMMA_SERVING_API_KEY": "gsk_x_y"})
    assert not connection.tls and connection.metadata == (("authorization", "Bearer gsk_x_y"),)
    assert isinstance(connection.channel(), grpc.Channel)


async def test_router_serving_still_takes_a_plain_address(router):
    _, backend = router
    assert await asyncio.to_thread(local.router_serving, f"127.0.0.1:{backend.router.port}")

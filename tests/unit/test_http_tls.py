"""The OpenAI HTTP port under security.tls: the same TLS / mTLS and client-certificate tenants as gRPC, or plaintext
only when explicitly allowed (real uvicorn, real httpx, certificates made by the test)."""

import logging
import ssl

import httpx
import pytest
from gemma_serving.config import parse_config
from gemma_serving.router.server import start_openai_server

from tests.unit.conftest import CONFIG

from tests.unit.test_tls import pki  # noqa: F401  (the module-scoped certificates fixture)


def _tls(d, **extra):
    return {"cert_file": str(d / "server.pem"), "key_file": str(d / "server_key.pem"), **extra}


async def _serve(make_router, security, **router):
    overrides = {"router": {"port": 0, "http_port": 0, **router}, "security": security}
    grpc_router, _ = await make_router(overrides)
    return await start_openai_server(parse_config({**CONFIG, **overrides}), grpc_router)


async def _stop(http):
    http.should_exit = True
    await http.gemma_task


def _client_context(d, *, client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(d / "ca.pem"))
    if client_cert:
        context.load_cert_chain(str(d / "client.pem"), str(d / "client_key.pem"))
    return context


async def test_mtls_on_http_maps_the_client_certificate_to_its_tenant(make_router, pki):  # noqa: F811
    d, _ = pki
    security = {"auth": "api_key", "tls": _tls(d, client_ca_file=str(d / "ca.pem"), require_client_cert=True),
                "tenants": [{"id": "billing", "client_cert_subjects": ["billing-service"]}]}
    http, port = await _serve(make_router, security)
    try:
        async with httpx.AsyncClient(verify=_client_context(d, client_cert=True)) as client:
            usage = await client.get(f"https://localhost:{port}/v1/usage")
            reply = await client.post(f"https://localhost:{port}/v1/chat/completions", json={
                "model": "text-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert usage.status_code == 200 and usage.json()["tenant"] == "billing"
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 2
        async with httpx.AsyncClient(verify=_client_context(d, client_cert=False)) as client:
            with pytest.raises(httpx.TransportError):  # no client certificate: refused in the handshake
                (await client.get(f"https://localhost:{port}/v1/usage")).raise_for_status()
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.TransportError):  # plaintext to the TLS port
                await client.get(f"http://127.0.0.1:{port}/v1/models")
    finally:
        await _stop(http)


async def test_tls_with_api_keys_on_http_and_a_certificate_alone_is_not_a_key(make_router, pki):  # noqa: F811
    from gemma_serving.router.auth import new_api_key

    d, _ = pki
    key, key_hash = new_api_key()
    security = {"auth": "api_key", "tls": _tls(d), "tenants": [{"id": "web", "api_key_hashes": [key_hash]}]}
    http, port = await _serve(make_router, security)
    try:
        async with httpx.AsyncClient(verify=_client_context(d, client_cert=False)) as client:
            good = await client.get(f"https://localhost:{port}/v1/usage", headers={"authorization": f"Bearer {key}"})
            missing = await client.get(f"https://localhost:{port}/v1/usage")
        assert good.status_code == 200 and good.json()["tenant"] == "web"
        assert missing.status_code == 401
    finally:
        await _stop(http)


async def test_plaintext_http_beside_tls_only_when_explicitly_allowed(make_router, pki, caplog):  # noqa: F811
    d, _ = pki
    with caplog.at_level(logging.WARNING):
        http, port = await _serve(make_router, {"tls": _tls(d)}, http_plaintext_beside_tls=True)
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/v1/models")).status_code == 200
        assert "PLAINTEXT HTTP BESIDE TLS" in caplog.text
    finally:
        await _stop(http)

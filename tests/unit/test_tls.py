"""TLS and mutual TLS on the gRPC router, with certificates made by the test; misconfiguration fails at start."""

import datetime

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.client import message


def _cert(cn, issuer_key=None, issuer_name=None, *, ca=False, san=None):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key, name, pem, key_pem


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_name, ca_pem, _ = _cert("test-ca", ca=True)
    _, _, server_pem, server_key = _cert("localhost", ca_key, ca_name, san="localhost")
    _, _, client_pem, client_key = _cert("billing-service", ca_key, ca_name)
    files = {"ca": ca_pem, "server": server_pem, "server_key": server_key, "client": client_pem,
             "client_key": client_key}
    for name, data in files.items():
        (d / f"{name}.pem").write_bytes(data)
    return d, files


def _req():
    return pb.GenerateRequest(model="text-model", messages=[message("hi")], sampling=pb.SamplingParams(max_tokens=2))


def _secure(port, files, *, client_cert=False):
    creds = grpc.ssl_channel_credentials(files["ca"], files["client_key"] if client_cert else None,
                                         files["client"] if client_cert else None)
    return grpc.aio.secure_channel(f"localhost:{port}", creds)


async def test_tls_and_mtls_client_certificate_maps_to_a_tenant(make_router, pki):
    d, files = pki
    tls = {"cert_file": str(d / "server.pem"), "key_file": str(d / "server_key.pem"),
           "client_ca_file": str(d / "ca.pem"), "require_client_cert": True}
    router, _ = await make_router({"router": {"port": 0, "host": "127.0.0.1"}, "security": {
        "auth": "api_key", "tls": tls,
        "tenants": [{"id": "billing", "client_cert_subjects": ["billing-service"]}]}})
    async with _secure(router.port, files, client_cert=True) as channel:
        reply = await pb_grpc.InferenceStub(channel).Generate(_req(), timeout=10)
        usage = await pb_grpc.InferenceStub(channel).GetUsage(pb.GetUsageRequest(), timeout=10)
    assert reply.usage.completion_tokens == 2 and usage.tenant == "billing"
    async with _secure(router.port, files) as channel:  # no client certificate: refused in the handshake
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.InferenceStub(channel).Generate(_req(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_plain_tls_with_api_keys(make_router, pki):
    from gemma_serving.router.auth import new_api_key

    d, files = pki
    key, key_hash = new_api_key()
    router, _ = await make_router({"security": {
        "auth": "api_key", "tls": {"cert_file": str(d / "server.pem"), "key_file": str(d / "server_key.pem")},
        "tenants": [{"id": "web", "api_key_hashes": [key_hash]}]}})
    async with _secure(router.port, files) as channel:
        usage = await pb_grpc.InferenceStub(channel).GetUsage(
            pb.GetUsageRequest(), metadata=(("authorization", f"Bearer {key}"),), timeout=10)
    assert usage.tenant == "web"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:  # plaintext to a TLS port
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.InferenceStub(channel).Generate(_req(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    "tls,message",
    [
        ({"cert_file": "/nonexistent.pem", "key_file": "{d}/server_key.pem"}, "cert_file: /nonexistent.pem does not"),
        ({"cert_file": "{d}/server.pem", "key_file": "{d}/client_key.pem"}, "key_file does not match the certificate"),
        ({"cert_file": "{d}/server_key.pem", "key_file": "{d}/server_key.pem"}, "is not a PEM certificate"),
        ({"cert_file": "{d}/server.pem", "key_file": "{d}/server_key.pem", "require_client_cert": True},
         "require_client_cert needs client_ca_file"),
    ],
)
async def test_tls_misconfiguration_fails_clearly_at_start(make_router, pki, tls, message):
    d, _ = pki
    tls = {k: v.format(d=d) if isinstance(v, str) else v for k, v in tls.items()}
    with pytest.raises(ValueError, match=message):
        await make_router({"security": {"tls": tls}})

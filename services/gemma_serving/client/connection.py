"""How a local tool (the CLI) reaches a platform it has the config of: address, TLS and credentials.

From the config: the router address, whether TLS is on and, for verifying the server, its certificate file (trusted
as the root unless `GEMMA_SERVING_TLS_CA` names the CA that signed it) and the names in it. From the environment:
`GEMMA_SERVING_API_KEY` (sent as `authorization: Bearer`), `GEMMA_SERVING_TLS_CLIENT_CERT` and
`GEMMA_SERVING_TLS_CLIENT_KEY` (the client certificate mTLS requires). Keys never go in the config or on the command
line (shell history, process lists).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from gemma_serving.client.sdk import channel_credentials, tls_options
from gemma_serving.config import ServingConfig
from gemma_serving.errors import InvalidRequest

API_KEY_ENV = "GEMMA_SERVING_API_KEY"
CA_ENV = "GEMMA_SERVING_TLS_CA"
CLIENT_CERT_ENV = "GEMMA_SERVING_TLS_CLIENT_CERT"
CLIENT_KEY_ENV = "GEMMA_SERVING_TLS_CLIENT_KEY"


@dataclass(frozen=True)
class Connection:
    """Everything needed to open a channel to the router and authenticate on it."""

    target: str
    api_key: str | None = None
    tls: bool = False
    root_certificates: bytes | None = None
    client_cert: tuple[bytes, bytes] | None = None  # (private key, certificate chain), PEM
    server_name: str | None = None
    auth_required: bool = False

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def channel(self) -> grpc.Channel:
        """A blocking channel with this connection's TLS settings."""
        if not self.tls:
            return grpc.insecure_channel(self.target)
        credentials = channel_credentials(True, self.root_certificates, self.client_cert)
        return grpc.secure_channel(self.target, credentials, options=tls_options(self.server_name))

    def client_options(self) -> dict:
        """Keyword arguments for GemmaClient / AsyncGemmaClient."""
        return {"api_key": self.api_key, "tls": self.tls, "root_certificates": self.root_certificates,
                "client_cert": self.client_cert, "server_name": self.server_name}

    def require_api_key(self) -> None:
        """Fail early, naming the variable, when the platform needs a key and none is set."""
        if self.auth_required and not self.api_key and self.client_cert is None:
            raise InvalidRequest(f"security.auth is api_key: set {API_KEY_ENV} to a key made by "
                                 "`gemma-serving new-api-key` (or a client certificate for mTLS)")


def connection_for(config: ServingConfig, target: str | None = None,
                   env: Mapping[str, str] = os.environ) -> Connection:
    """The connection to the platform `config` describes (at `target`, default the configured router address)."""
    target = target or f"{config.router.host}:{config.router.port}"
    tls = config.security.tls
    auth_required = config.security.auth == "api_key"
    if tls is None:
        return Connection(target, env.get(API_KEY_ENV) or None, auth_required=auth_required)
    server_cert = _read(tls.cert_file, "security.tls.cert_file")
    roots = _read(env[CA_ENV], CA_ENV) if env.get(CA_ENV) else server_cert
    client_cert = None
    if env.get(CLIENT_CERT_ENV) or env.get(CLIENT_KEY_ENV):
        client_cert = (_read(env.get(CLIENT_KEY_ENV, ""), CLIENT_KEY_ENV),
                       _read(env.get(CLIENT_CERT_ENV, ""), CLIENT_CERT_ENV))
    elif tls.require_client_cert:
        raise InvalidRequest(f"security.tls.require_client_cert is on: set {CLIENT_CERT_ENV} and {CLIENT_KEY_ENV} to "
                             "a client certificate and key signed by security.tls.client_ca_file")
    return Connection(target, env.get(API_KEY_ENV) or None, True, roots, client_cert,
                      _server_name(target, server_cert), auth_required)


def _read(path: str, what: str) -> bytes:
    if not path or not Path(path).is_file():
        raise InvalidRequest(f"{what}: {path or '(unset)'} is not a readable file")
    return Path(path).read_bytes()


def _server_name(target: str, server_cert_pem: bytes) -> str | None:
    """A name in the server's certificate to verify against when the target's host is not one of them."""
    from cryptography import x509

    host = target.rsplit(":", 1)[0].strip("[]")
    cert = x509.load_pem_x509_certificate(server_cert_pem)
    names = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName) + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    return None if host in names or not names else str(names[0])

"""TLS and mutual TLS on the OpenAI-compatible HTTP port, with the same settings as the gRPC port.

The HTTP port must not be a plaintext side door beside a TLS (or mTLS-only) gRPC port: with `security.tls` set it
serves HTTPS from the same certificate and key, verifies client certificates against the same CA in the same mode,
and hands the verified certificate's CN to authentication exactly as gRPC does (`client_cert_subjects`). Plaintext
HTTP beside TLS needs `router.http_plaintext_beside_tls: true` (a proxy in front terminates TLS) and is logged loudly.
"""

from __future__ import annotations

import logging
import ssl

from gemma_serving.security_config import TlsSettings

log = logging.getLogger(__name__)

#: ASGI scope key under `extensions` carrying the connection's verified client-certificate CN.
CLIENT_CERT_EXTENSION = "gemma.client_cert"


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """An SSLContext for the HTTP port from the gRPC port's settings (validated before, by `server_credentials`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    context.set_alpn_protocols(["http/1.1"])
    if tls.client_ca_file:
        context.load_verify_locations(cafile=tls.client_ca_file)
        # As on gRPC: a certificate is verified when presented; only require_client_cert makes it mandatory (and
        # only then does authentication trust its subject).
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return context


def common_name(peer_certificate: dict | None) -> str | None:
    """The subject CN of a certificate as `ssl.SSLObject.getpeercert()` returns it (None without one)."""
    for rdn in (peer_certificate or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def client_cert_subject(scope: dict) -> str | None:
    """The verified client-certificate CN of the connection an ASGI request came in on (None without mTLS)."""
    return (scope.get("extensions") or {}).get(CLIENT_CERT_EXTENSION)


def client_cert_protocol() -> type:
    """uvicorn's HTTP protocol class (httptools when installed, as uvicorn's `auto` picks, else h11), extended to put
    the connection's verified client-certificate CN into every request's scope.

    uvicorn builds one protocol object per connection and passes its `app` each request; wrapping that app once per
    connection is how a per-connection fact (the certificate) reaches per-request scopes."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # pragma: no cover - httptools is a dependency of uvicorn[standard]
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class ClientCertProtocol(base):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            subject = common_name(transport.get_extra_info("peercert"))
            if subject is None:
                return
            app = self.app

            async def app_with_subject(scope, receive, send):
                scope.setdefault("extensions", {})[CLIENT_CERT_EXTENSION] = subject
                await app(scope, receive, send)

            self.app = app_with_subject

    return ClientCertProtocol


def http_tls_options(tls: TlsSettings | None, *, plaintext_beside_tls: bool) -> dict:
    """uvicorn.Config options for the HTTP port: TLS like gRPC's, or {} for plaintext (when allowed)."""
    if tls is None:
        return {}
    if plaintext_beside_tls:
        log.warning("PLAINTEXT HTTP BESIDE TLS gRPC: the OpenAI port serves without TLS or client certificates "
                    "(router.http_plaintext_beside_tls: true); put a TLS-terminating, authenticating proxy in front")
        return {}
    context = server_ssl_context(tls)
    return {"ssl_context_factory": lambda _config, _default: context, "http": client_cert_protocol()}

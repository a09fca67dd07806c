"""gRPC server credentials from config, checked at start so TLS mistakes fail loudly then, not at first request."""

from __future__ import annotations

from pathlib import Path

import grpc

from gemma_serving.security_config import TlsSettings


def _read(path: str, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"security.tls.{what}: {path} does not exist")
    return p.read_bytes()


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """Validated TLS (or mTLS) credentials; raises ValueError naming the bad setting."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_pem, key_pem = _read(tls.cert_file, "cert_file"), _read(tls.key_file, "key_file")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ValueError(f"security.tls.cert_file: {tls.cert_file} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"security.tls.key_file: {tls.key_file} is not an unencrypted PEM private key") from None
    if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ValueError("security.tls: key_file does not match the certificate in cert_file")
    client_ca = None
    if tls.client_ca_file:
        client_ca = _read(tls.client_ca_file, "client_ca_file")
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError:
            raise ValueError(f"security.tls.client_ca_file: {tls.client_ca_file} holds no PEM certificate") from None
    elif tls.require_client_cert:
        raise ValueError("security.tls.require_client_cert needs client_ca_file")
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=client_ca,
                                       require_client_auth=tls.require_client_cert)

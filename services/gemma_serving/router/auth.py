"""Authentication: API keys (stored as salted SHA-256 hashes), mTLS client-certificate subjects, or disabled.

Keys look like `gsk_<key id>_<secret>`; the key id selects the stored hash, and the comparison is constant-time. An
unknown key id costs the same hash as a known one, so timing does not reveal which ids exist. Failed attempts are
limited per client address.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

import yaml

from gemma_serving.errors import PermissionDenied, RateLimited, Unauthenticated
from gemma_serving.security_config import SecuritySettings, TenantConfig

log = logging.getLogger(__name__)

DEFAULT_TENANT = TenantConfig(id="default")


@dataclass(frozen=True)
class Credentials:
    """What a caller presented: the authorization header, its verified client-certificate CN, its address."""

    authorization: str | None = None
    client_cert_subject: str | None = None
    peer: str = "unknown"


def new_api_key() -> tuple[str, str]:
    """A new API key and the hash line to put in the tenant's config."""
    key_id, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    digest = hashlib.sha256(salt + secret.encode()).hexdigest()
    return f"gsk_{key_id}_{secret}", f"sha256:{key_id}:{salt.hex()}:{digest}"


def load_tenants(settings: SecuritySettings) -> list[TenantConfig]:
    """Tenants from the config plus `tenants_file` (a mounted Secret); errors are clear at start."""
    tenants = list(settings.tenants)
    if settings.tenants_file:
        path = Path(settings.tenants_file)
        if not path.is_file():
            raise ValueError(f"security.tenants_file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        tenants += [TenantConfig.model_validate(t) for t in data.get("tenants", [])]
    return tenants


class Authenticator:
    """Maps credentials to a tenant or raises Unauthenticated / RateLimited."""

    def __init__(self, settings: SecuritySettings, *, clock=time.monotonic) -> None:
        self.enabled = settings.auth == "api_key"
        # Certificate subjects are trusted only when the TLS layer verified them (require_client_cert).
        self._verified_certs = settings.tls is not None and settings.tls.require_client_cert
        self._clock = clock
        self._limit = settings.failed_auth_per_minute
        self._failures: dict[str, deque] = defaultdict(deque)
        tenants = load_tenants(settings) if self.enabled else []
        self._by_key_id: dict[str, tuple[bytes, bytes, TenantConfig]] = {}
        self._by_subject: dict[str, TenantConfig] = {}
        for tenant in tenants:
            for entry in tenant.api_key_hashes:
                _, key_id, salt, digest = entry.split(":")
                self._by_key_id[key_id] = (bytes.fromhex(salt), bytes.fromhex(digest), tenant)
            for subject in tenant.client_cert_subjects:
                self._by_subject[subject] = tenant
        self._dummy = (secrets.token_bytes(16), secrets.token_bytes(32))
        if not self.enabled:
            log.warning("AUTHENTICATION IS DISABLED: every caller is tenant 'default' (security.auth: disabled)")

    def authenticate(self, credentials: Credentials) -> TenantConfig:
        if not self.enabled:
            return DEFAULT_TENANT
        if self._verified_certs and credentials.client_cert_subject in self._by_subject:
            return self._by_subject[credentials.client_cert_subject]
        self._check_failures(credentials.peer)
        header = credentials.authorization or ""
        if not header:
            raise Unauthenticated("missing credentials: send metadata 'authorization: Bearer <api key>'")
        scheme, _, key = header.partition(" ")
        tenant = self._match(key.strip()) if scheme.lower() == "bearer" else None
        if tenant is None:
            self._failures[credentials.peer].append(self._clock())
            raise Unauthenticated("invalid API key")
        return tenant

    def _match(self, key: str) -> TenantConfig | None:
        parts = key.split("_", 2)
        key_id, secret = (parts[1], parts[2]) if len(parts) == 3 and parts[0] == "gsk" else ("", key)
        salt, digest, tenant = self._by_key_id.get(key_id, (*self._dummy, None))
        presented = hashlib.sha256(salt + secret.encode()).digest()
        return tenant if hmac.compare_digest(presented, digest) and tenant is not None else None

    def _check_failures(self, peer: str) -> None:
        window = self._failures[peer]
        now = self._clock()
        while window and now - window[0] > 60:
            window.popleft()
        if len(window) >= self._limit:
            raise RateLimited(f"too many failed authentications from this client; limit {self._limit} per minute",
                              retry_after_s=max(60 - (now - window[0]), 1.0))


def authorize_model(tenant: TenantConfig, model: str) -> None:
    """PermissionDenied if the tenant may not call `model`."""
    if tenant.models is not None and model not in tenant.models:
        raise PermissionDenied(f"tenant {tenant.id} may not use model {model[:128]}; allowed: "
                               f"{', '.join(tenant.models) or 'none'}")

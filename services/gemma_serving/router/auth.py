"""Authentication: API keys (stored as salted SHA-256 hashes), mTLS client-certificate subjects, or disabled.

Keys look like `gsk_<key id>_<secret>`; the key id selects the stored hash, and the comparison is constant-time. An
unknown key id costs the same hash as a known one, so timing does not reveal which ids exist.

Failed attempts are limited per client address, but only failures are refused: a presented key is checked first, and
a valid key is always accepted, whatever others behind the same address (a load balancer, a NAT) got wrong. Guessing is
not what the limit stops (a secret has 256 random bits); it answers a client that keeps failing with
RESOURCE_EXHAUSTED and retry info instead of evaluating its keys forever. Memory is bounded: one fixed-window counter
per address for at most `failed_auth_tracked_clients` addresses, the longest quiet dropped first.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
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
        self._failures = FailedAuthLimiter(settings.failed_auth_per_minute, settings.failed_auth_tracked_clients,
                                           clock=clock)
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
        header = credentials.authorization or ""
        scheme, _, key = header.partition(" ")
        tenant = self._match(key.strip()) if header and scheme.lower() == "bearer" else None
        if tenant is not None:
            return tenant
        self._failures.refuse_if_over(credentials.peer)
        if not header:  # a client that sends no key is misconfigured, not guessing: not counted
            raise Unauthenticated("missing credentials: send metadata 'authorization: Bearer <api key>'")
        self._failures.record(credentials.peer)
        raise Unauthenticated("invalid API key")

    def _match(self, key: str) -> TenantConfig | None:
        parts = key.split("_", 2)
        key_id, secret = (parts[1], parts[2]) if len(parts) == 3 and parts[0] == "gsk" else ("", key)
        salt, digest, tenant = self._by_key_id.get(key_id, (*self._dummy, None))
        presented = hashlib.sha256(salt + secret.encode()).digest()
        return tenant if hmac.compare_digest(presented, digest) and tenant is not None else None


class FailedAuthLimiter:
    """Failed authentications per client address in fixed one-minute windows, for at most `max_clients` addresses
    (least recently failing dropped first), so memory stays bounded whatever the number of distinct peers."""

    WINDOW_S = 60.0

    def __init__(self, limit: int, max_clients: int, *, clock=time.monotonic) -> None:
        self.limit = limit
        self.max_clients = max_clients
        self._clock = clock
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()  # peer -> (window start, failures)

    def __len__(self) -> int:
        return len(self._windows)

    def refuse_if_over(self, peer: str) -> None:
        """RateLimited if `peer` already failed `limit` times in its current window."""
        start, failures = self._windows.get(peer, (0.0, 0))
        elapsed = self._clock() - start
        if failures >= self.limit and elapsed < self.WINDOW_S:
            raise RateLimited(f"too many failed authentications from this client: failed_auth_per_minute is "
                              f"{self.limit}", retry_after_s=max(self.WINDOW_S - elapsed, 1.0))

    def record(self, peer: str) -> None:
        """Count one failure of `peer`."""
        now = self._clock()
        start, failures = self._windows.pop(peer, (now, 0))
        if now - start >= self.WINDOW_S:
            start, failures = now, 0
        self._windows[peer] = (start, failures + 1)
        while len(self._windows) > self.max_clients:
            self._windows.popitem(last=False)


def authorize_model(tenant: TenantConfig, model: str) -> None:
    """PermissionDenied if the tenant may not call `model`."""
    if tenant.models is not None and model not in tenant.models:
        raise PermissionDenied(f"tenant {tenant.id} may not use model {model[:128]}; allowed: "
                               f"{', '.join(tenant.models) or 'none'}")

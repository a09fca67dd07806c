"""Typed configuration of tenancy and security: API keys (salted hashes only), tenants and their quotas, TLS/mTLS,
and the optional safety policy. Part of the one config file (`security:`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TenantConfig(_Strict):
    """One tenant: who it is, how it authenticates, what it may use."""

    id: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Tenant id (a metric label: keep few).")
    api_key_hashes: list[str] = Field(
        default_factory=list,
        description="Salted hashes of the tenant's API keys, 'sha256:<key id>:<salt hex>:<hash hex>', as printed by "
        "`gemma-serving new-api-key`. Keys themselves are never stored.",
    )
    client_cert_subjects: list[str] = Field(
        default_factory=list, description="mTLS client-certificate subject CNs that authenticate as this tenant."
    )
    models: list[str] | None = Field(None, description="Models the tenant may call; null means all.")
    # Quotas: sliding windows of a minute, an hour and a day (router/quotas.py WINDOWS); null is unlimited.
    requests_per_minute: int | None = Field(None, gt=0, description="Requests per sliding minute (null: unlimited).")
    tokens_per_minute: int | None = Field(
        None, gt=0, description="Prompt + completion tokens per sliding minute, charged as tokens stream (null: "
        "unlimited)."
    )
    requests_per_hour: int | None = Field(
        None, gt=0, description="Requests per sliding hour, e.g. the Gemma guide's 100 (null: unlimited)."
    )
    tokens_per_hour: int | None = Field(None, gt=0, description="Tokens per sliding hour (null: unlimited).")
    requests_per_day: int | None = Field(None, gt=0, description="Requests per sliding day (null: unlimited).")
    tokens_per_day: int | None = Field(None, gt=0, description="Tokens per sliding day (null: unlimited).")
    max_concurrent_streams: int | None = Field(None, gt=0, description="Requests in flight at once (null: no cap).")
    admin: bool = Field(
        False, description="May call the Admin service (register / unregister LoRA adapters). With auth disabled "
        "every caller may (there is no identity to check).",
    )


class TlsSettings(_Strict):
    """TLS for the gRPC router; with `client_ca_file`, mutual TLS."""

    cert_file: str = Field(..., description="PEM server certificate chain.")
    key_file: str = Field(..., description="PEM private key.")
    client_ca_file: str | None = Field(None, description="PEM CA bundle for client certificates (enables mTLS).")
    require_client_cert: bool = Field(
        False,
        description="Refuse clients without a certificate signed by client_ca_file. Required for tenants' "
        "client_cert_subjects to be honoured (gRPC verifies client certificates only in this mode).",
    )


class SafetySettings(_Strict):
    """Optional input/output policy (default off)."""

    policy: Literal["none", "blocked_terms"] = Field("none", description="Which policy checks requests and output.")
    blocked_terms: list[str] = Field(default_factory=list, description="For blocked_terms: case-insensitive terms.")


class SecuritySettings(_Strict):
    """Authentication, tenants, TLS, safety and the failed-authentication limit."""

    auth: Literal["disabled", "api_key"] = Field(
        "disabled", description="disabled: every caller is tenant 'default' (local use; logged loudly at start)."
    )
    tenants: list[TenantConfig] = Field(default_factory=list, description="Tenants and their keys and quotas.")
    tenants_file: str | None = Field(
        None, description="YAML file with a `tenants:` list (a mounted Kubernetes Secret), merged with `tenants`."
    )
    tls: TlsSettings | None = Field(None, description="TLS on the gRPC port; None means plaintext (use a gateway).")
    failed_auth_per_minute: int = Field(
        20, gt=0, description="Failed authentications allowed per client address per minute; beyond, that "
        "address's failing requests are refused RESOURCE_EXHAUSTED (valid keys are always accepted)."
    )
    failed_auth_tracked_clients: int = Field(
        10_000, gt=0, le=10_000_000,
        description="Client addresses whose failed authentications are counted at once (the least recently failing "
        "is forgotten beyond), bounding the limiter's memory.",
    )
    fair_share: bool = Field(
        True, description="Under saturation, cap each tenant at an equal share of a service's in-flight capacity."
    )
    safety: SafetySettings = Field(default_factory=SafetySettings, description="Input/output policy hook.")

    @model_validator(mode="after")
    def _consistent(self) -> SecuritySettings:
        ids = [t.id for t in self.tenants]
        if len(ids) != len(set(ids)):
            raise ValueError(f"tenant ids must be unique, got {ids}")
        for tenant in self.tenants:
            for entry in tenant.api_key_hashes:
                if len(entry.split(":")) != 4 or not entry.startswith("sha256:"):
                    raise ValueError(f"tenant {tenant.id}: api key hash must be 'sha256:<id>:<salt>:<hash>'")
        if self.auth == "api_key" and not self.tenants and not self.tenants_file:
            raise ValueError("auth: api_key needs tenants or tenants_file")
        return self

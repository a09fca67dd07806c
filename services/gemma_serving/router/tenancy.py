"""Tenancy in the router: who is calling (auth), what they may use, their quotas, fair shares and the safety policy."""

from __future__ import annotations

from gemma_serving.config import ServingConfig
from gemma_serving.engines.types import GenerationRequest
from gemma_serving.router.auth import Authenticator, Credentials, authorize_model
from gemma_serving.router.quotas import FairShare, TenantQuotas
from gemma_serving.router.safety import NoPolicy, build_policy
from gemma_serving.security_config import TenantConfig


class Tenancy:
    """Everything per-tenant the pipeline applies before and while a request runs."""

    def __init__(self, config: ServingConfig) -> None:
        security = config.security
        self.authenticator = Authenticator(security)
        # The whole limits: router replicas exchange their usage (router/quota_sync.py).
        self.quotas = TenantQuotas()
        routers = config.router.num_replicas
        capacity = {
            kind.value: max(1, s.deployment.max_ongoing_requests * s.deployment.autoscaling.max_replicas // routers)
            + max(s.deployment.max_queued_requests, 0)
            for kind, s in config.services.items()
        }
        self.fair = FairShare(capacity) if security.fair_share else None
        self.policy = build_policy(security.safety)
        self.checks_output = not isinstance(self.policy, NoPolicy)

    def authenticate(self, credentials: Credentials) -> TenantConfig:
        return self.authenticator.authenticate(credentials)

    def admit(self, tenant: TenantConfig, request: GenerationRequest, service: str) -> None:
        """Model permission, safety policy, quotas and fair share; raises the matching error."""
        authorize_model(tenant, request.model)
        self.policy.check_request(request)
        self.quotas.admit(tenant)
        if self.fair is not None:
            try:
                self.fair.admit(service, tenant.id)
            except Exception:
                self.quotas.release(tenant)
                raise

    def release(self, tenant: TenantConfig, service: str) -> None:
        self.quotas.release(tenant)
        if self.fair is not None:
            self.fair.release(service, tenant.id)

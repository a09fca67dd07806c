"""The gRPC Admin servicer: register and unregister LoRA adapters at run time, for admin tenants only."""

from __future__ import annotations

import asyncio
import logging

from gemma_serving.adapter_registry import RegisteredAdapter
from gemma_serving.api import admin_pb2 as admin_pb
from gemma_serving.api import admin_pb2_grpc as admin_grpc
from gemma_serving.errors import PermissionDenied
from gemma_serving.router.adapters import AdapterCatalog
from gemma_serving.router.interceptors import current_tenant
from gemma_serving.router.tenancy import Tenancy
from gemma_serving.security_config import TenantConfig

log = logging.getLogger(__name__)


class AdminServicer(admin_grpc.AdminServicer):
    """Implements gemma.serving.v1.Admin over the router's AdapterCatalog."""

    def __init__(self, tenancy: Tenancy, adapters: AdapterCatalog) -> None:
        self._tenancy = tenancy
        self._adapters = adapters

    def _admin(self) -> TenantConfig:
        """The caller (authenticated by the interceptor), if it is an admin."""
        tenant = current_tenant()
        if self._tenancy.authenticator.enabled and not tenant.admin:
            raise PermissionDenied(f"tenant {tenant.id} may not call Admin; admin operations need a tenant with "
                                   "admin: true")
        return tenant

    async def RegisterAdapter(self, request: admin_pb.RegisterAdapterRequest,
                              context) -> admin_pb.RegisterAdapterResponse:
        tenant = self._admin()
        entry = await asyncio.to_thread(self._adapters.register, request.model, request.name, request.source,
                                        replace=request.replace)
        log.info("tenant %s registered adapter %s of %s (lora id %d)", tenant.id, entry.name, request.model,
                 entry.lora_id)
        return admin_pb.RegisterAdapterResponse(adapter=registered_to_pb(request.model, entry))

    async def UnregisterAdapter(self, request: admin_pb.UnregisterAdapterRequest,
                                context) -> admin_pb.UnregisterAdapterResponse:
        tenant = self._admin()
        entry = await asyncio.to_thread(self._adapters.unregister, request.model, request.name)
        log.info("tenant %s unregistered adapter %s of %s", tenant.id, entry.name, request.model)
        return admin_pb.UnregisterAdapterResponse(adapter=registered_to_pb(request.model, entry))


def registered_to_pb(model: str, entry: RegisteredAdapter) -> admin_pb.RegisteredAdapter:
    """The wire form of a registration."""
    return admin_pb.RegisteredAdapter(model=model, name=entry.name, source=entry.source, lora_id=entry.lora_id,
                                      registered_at_unix_ms=int(entry.registered_at * 1000))

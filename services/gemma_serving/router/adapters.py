"""The adapters each model serves, as the router sees them: the configured ones plus its live registry's.

Validation asks it whether a request's adapter exists, ListModels lists it, and the Admin service registers and
unregisters through it. A registry's listing is cached for `refresh_s` (one directory read per period at most, so
unknown names cannot make the router hammer storage); changes made through this router are seen at once.
"""

from __future__ import annotations

from gemma_serving.adapter_registry import AdapterRegistry, RegisteredAdapter, check_adapter_dir
from gemma_serving.config import ServiceKind, ServingConfig
from gemma_serving.errors import AlreadyExists, InvalidRequest, ModelNotFound


class AdapterCatalog:
    """Configured and registered LoRA adapters per service."""

    def __init__(self, config: ServingConfig, *, refresh_s: float | None = None) -> None:
        self._config = config
        self._registries = {
            kind: AdapterRegistry(s.model.adapter_registry, refresh_s=refresh_s)
            for kind, s in config.services.items() if s.model.adapter_registry
        }

    def names(self, kind: ServiceKind) -> list[str]:
        """Adapter names of the service's model: configured ones first, then registered ones by name."""
        configured = [a.name for a in self._config.services[kind].model.adapters]
        registry = self._registries.get(kind)
        registered = sorted(n for n in registry.entries() if n not in configured) if registry else []
        return configured + registered

    def check(self, adapter: str, kind: ServiceKind) -> None:
        """InvalidRequest naming the known adapters if `adapter` is neither configured nor registered."""
        model = self._config.services[kind].model
        if any(a.name == adapter for a in model.adapters):
            return
        registry = self._registries.get(kind)
        if registry is not None and registry.get(adapter) is not None:
            return
        names = self.names(kind)
        known = f"configured adapters: {', '.join(names)}" if names else "this model has no adapters"
        raise InvalidRequest(f"adapter '{adapter[:64]}' is not configured for model {model.name}; {known}",
                             field="adapter")

    def register(self, model: str, name: str, source: str, *, replace: bool = False) -> RegisteredAdapter:
        """Register adapter `name` of `model` from the PEFT directory `source` (checked here first)."""
        kind, registry = self._registry(model)
        settings = self._config.services[kind].model
        if any(a.name == name for a in settings.adapters):
            raise AlreadyExists(f"adapter '{name[:64]}' is configured for model {model}; pick another name",
                                field="name")
        if not source:
            raise InvalidRequest("source is required: the PEFT adapter directory", field="source")
        check_adapter_dir(source, settings.engine.max_lora_rank)
        return registry.register(name, source, replace=replace,
                                 reserved_ids=range(1, len(settings.adapters) + 1))

    def unregister(self, model: str, name: str) -> RegisteredAdapter:
        """Remove the registration of adapter `name` of `model`."""
        _, registry = self._registry(model)
        return registry.unregister(name)

    def _registry(self, model: str) -> tuple[ServiceKind, AdapterRegistry]:
        kind = self._config.service_for_model(model)
        if kind is None:
            names = ", ".join(s.model.name for s in self._config.services.values())
            raise ModelNotFound(f"model '{model[:128]}' is not served here; available models: {names}",
                                field="model")
        registry = self._registries.get(kind)
        if registry is None:
            raise InvalidRequest(f"model {model} has no adapter registry (set services.{kind.value}.model."
                                 "adapter_registry to register adapters at run time)", field="model")
        return kind, registry

"""Live adapter registration through the real gRPC router (Admin + Inference) over in-process deployments with a
FakeEngine: registered adapters are servable at once with their registry LoRA id, listed, survive a new replica,
reload when registered again, are refused after unregistering; Admin needs an admin tenant."""

from __future__ import annotations

import copy

import grpc
import pytest
from gemma_serving.api import admin_pb2 as admin_pb
from gemma_serving.api import admin_pb2_grpc as admin_grpc
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.client import message
from gemma_serving.config import ServiceKind, parse_config
from gemma_serving.engines.fake import FakeEngine
from gemma_serving.router.auth import new_api_key

from tests.unit.conftest import CONFIG, make_deployment, start_router
from tests.unit.test_adapter_registry import peft_dir

ADMIN_KEY, ADMIN_HASH = new_api_key()
USER_KEY, USER_HASH = new_api_key()


class RegistryFakeEngine(FakeEngine):
    """FakeEngine with VllmEngine's adapter methods, recording (event, name, lora id)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.events: list[tuple] = []

    async def load_adapter(self, name, path, lora_id=None) -> None:
        self.events.append(("load", name, lora_id, str(path)))

    async def unload_adapter(self, name) -> None:
        self.events.append(("unload", name))


def config_with_registry(tmp_path, **security):
    data = copy.deepcopy(CONFIG)
    data["services"]["text"]["model"]["adapters"] = [{"name": "fixed", "source": str(peft_dir(tmp_path, "fixed"))}]
    data["services"]["text"]["model"]["adapter_registry"] = str(tmp_path / "registry")
    if security:
        data["security"] = security
    return parse_config(data)


@pytest.fixture
async def live(tmp_path):
    router, backend = await start_router(config_with_registry(tmp_path), lambda: RegistryFakeEngine())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.port}")
    yield pb_grpc.InferenceStub(channel), admin_grpc.AdminStub(channel), backend
    await channel.close()
    await router.drain_and_stop(0)


def generate(adapter=""):
    return pb.GenerateRequest(model="text-model", messages=[message("hi")], adapter=adapter,
                              sampling=pb.SamplingParams(max_tokens=2))


def register(name, source, replace=False):
    return admin_pb.RegisterAdapterRequest(model="text-model", name=name, source=str(source), replace=replace)


async def listed(stub):
    models = {m.name: m for m in (await stub.ListModels(pb.ListModelsRequest())).models}
    return list(models["text-model"].adapters)


async def test_registered_adapter_is_served_listed_and_unregistered_without_restart(live, tmp_path):
    stub, admin, backend = live
    engine = backend.engines[ServiceKind.TEXT]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(generate("trained"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "configured adapters: fixed" in info.value.details()

    source = peft_dir(tmp_path, "trained")
    reply = await admin.RegisterAdapter(register("trained", source))
    assert reply.adapter.name == "trained" and reply.adapter.lora_id >= 1000 and reply.adapter.source == str(source)
    assert await listed(stub) == ["fixed", "trained"]
    await stub.Generate(generate("trained"))
    await stub.Generate(generate("trained"))
    assert engine.events == [("load", "trained", reply.adapter.lora_id, str(source))]  # loaded once, registry id
    assert engine.seen[-1].adapter == "trained"

    removed = await admin.UnregisterAdapter(admin_pb.UnregisterAdapterRequest(model="text-model", name="trained"))
    assert removed.adapter.lora_id == reply.adapter.lora_id
    assert await listed(stub) == ["fixed"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(generate("trained"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
def no_listing_cache(monkeypatch):
    monkeypatch.setattr("gemma_serving.adapter_registry.DEFAULT_REFRESH_S", 0.0)


async def test_registering_again_with_replace_reloads_the_new_weights_under_a_new_id(no_listing_cache, live,
                                                                                    tmp_path):
    stub, admin, backend = live
    engine = backend.engines[ServiceKind.TEXT]
    first = (await admin.RegisterAdapter(register("a", peft_dir(tmp_path, "v1")))).adapter
    await stub.Generate(generate("a"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.RegisterAdapter(register("a", peft_dir(tmp_path, "v2")))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    second = (await admin.RegisterAdapter(register("a", tmp_path / "v2", replace=True))).adapter
    assert second.lora_id != first.lora_id
    await stub.Generate(generate("a"))
    assert engine.events == [("load", "a", first.lora_id, str(tmp_path / "v1")),
                             ("load", "a", second.lora_id, str(tmp_path / "v2"))]


@pytest.mark.parametrize("fields, code, text", [
    ({"name": "fixed"}, grpc.StatusCode.ALREADY_EXISTS, "adapter 'fixed' is configured for model text-model"),
    ({"name": "x", "source": "/no/such/dir"}, grpc.StatusCode.INVALID_ARGUMENT, "holds no adapter_config.json"),
    ({"name": "../x"}, grpc.StatusCode.INVALID_ARGUMENT, "adapter name must match"),
    ({"name": "x", "model": "vision-model"}, grpc.StatusCode.INVALID_ARGUMENT,
     "model vision-model has no adapter registry"),
    ({"name": "x", "model": "nope"}, grpc.StatusCode.NOT_FOUND, "model 'nope' is not served here"),
])
async def test_bad_registrations_are_refused_with_clear_errors(live, tmp_path, fields, code, text):
    _, admin, _ = live
    request = {"model": "text-model", "source": str(peft_dir(tmp_path, "ok")), **fields}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.RegisterAdapter(admin_pb.RegisterAdapterRequest(**request))
    assert info.value.code() == code
    assert text in info.value.details()


async def test_a_new_replica_serves_an_adapter_registered_before_it_started(tmp_path):
    from gemma_serving.adapter_registry import AdapterRegistry
    from gemma_serving.engines.types import GenerationRequest, Message, Sampling, TextPart

    config = config_with_registry(tmp_path)
    entry = AdapterRegistry(str(tmp_path / "registry")).register("trained", str(peft_dir(tmp_path, "trained")))
    engine = RegistryFakeEngine()
    replica = await make_deployment(ServiceKind.TEXT, config.services[ServiceKind.TEXT], engine)
    request = GenerationRequest(model="text-model", messages=(Message("user", (TextPart("hi"),)),),
                                sampling=Sampling(max_tokens=1), adapter="trained")
    assert [c async for c in replica.generate(request, "r1")]
    assert engine.events == [("load", "trained", entry.lora_id, str(tmp_path / "trained"))]


async def test_admin_calls_need_an_admin_tenant(tmp_path):
    config = config_with_registry(tmp_path, auth="api_key", tenants=[
        {"id": "ops", "api_key_hashes": [ADMIN_HASH], "admin": True},
        {"id": "app", "api_key_hashes": [USER_HASH]},
    ])
    router, _ = await start_router(config, lambda: RegistryFakeEngine())
    source = peft_dir(tmp_path, "trained")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            admin = admin_grpc.AdminStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin.RegisterAdapter(register("trained", source))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin.RegisterAdapter(register("trained", source),
                                            metadata=[("authorization", f"Bearer {USER_KEY}")])
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "tenant app may not call Admin" in info.value.details()
            reply = await admin.RegisterAdapter(register("trained", source),
                                                metadata=[("authorization", f"Bearer {ADMIN_KEY}")])
            assert reply.adapter.name == "trained"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin.UnregisterAdapter(admin_pb.UnregisterAdapterRequest(model="text-model", name="trained"),
                                              metadata=[("authorization", f"Bearer {USER_KEY}")])
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await router.drain_and_stop(0)

"""LoRA adapters through the router and a deployment (real gRPC, in-process deployments, FakeEngine), the LRU of
loaded adapters, and the multiplexed model id the Serve backend sends."""

from __future__ import annotations

import asyncio

import copy
import gc
import json

import grpc
import pytest
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.client import message
from gemma_serving.config import ServiceKind, parse_config
from gemma_serving.deployments.modality import LoadedAdapter, LocalMultiplexer
from gemma_serving.engines.fake import FakeEngine
from gemma_serving.engines.types import GenerationRequest, Message, Sampling, TextPart
from gemma_serving.deltas.publisher import DeltaPublisher
from gemma_serving.deltas.subscriber import DeltaSubscriber
from gemma_serving.router.backends import ServeHandleBackend

from tests.unit.conftest import CONFIG, start_router


class AdapterFakeEngine(FakeEngine):
    """FakeEngine with the adapter methods of VllmEngine, recording what was loaded and unloaded."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.events: list[tuple[str, str]] = []
        self.paths: dict[str, str] = {}

    async def load_adapter(self, name, path) -> None:
        self.events.append(("load", name))
        self.paths[name] = str(path)

    async def unload_adapter(self, name) -> None:
        self.events.append(("unload", name))


def adapter_dir(tmp_path, name):
    path = tmp_path / name
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    return path


@pytest.fixture
async def lora_router(tmp_path):
    data = copy.deepcopy(CONFIG)
    data["services"]["text"]["model"]["adapters"] = [
        {"name": "alpha", "source": str(adapter_dir(tmp_path, "alpha"))},
        {"name": "beta", "source": str(adapter_dir(tmp_path, "beta"))},
        {"name": "gone", "source": str(tmp_path / "missing")},
    ]
    # One loaded adapter per replica: the second distinct adapter evicts the first.
    data["services"]["text"]["model"]["engine"] = {"max_loras": 1, "max_cpu_loras": 1}
    router, backend = await start_router(parse_config(data), lambda: AdapterFakeEngine(step_delay_s=0.001))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.port}")
    yield pb_grpc.InferenceStub(channel), backend, backend.deployments[ServiceKind.TEXT]
    await channel.close()
    await router.drain_and_stop(0)


def request(**kw):
    kw.setdefault("model", "text-model")
    kw.setdefault("messages", [message("hello")])
    kw.setdefault("sampling", pb.SamplingParams(max_tokens=3, seed=1, temperature=1.0))
    return pb.GenerateRequest(**kw)


async def test_adapter_requests_reach_the_engine_loaded_once(lora_router, tmp_path):
    stub, backend, text = lora_router
    engine = backend.engines[ServiceKind.TEXT]
    await stub.Generate(request(adapter="alpha"))
    await stub.Generate(request(adapter="alpha"))
    chunks = [c async for c in stub.GenerateStream(request(adapter="alpha"))]
    assert chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert [r.adapter for r in engine.seen] == ["alpha"] * 3
    assert engine.events == [("load", "alpha")]  # the later requests used the loaded adapter
    assert engine.paths["alpha"] == str(tmp_path / "alpha")
    facts = await text.describe()
    assert facts["adapters"] == {"loaded": ["alpha"], "loads": {"alpha": 1}, "multiplexing": "local"}


async def test_base_requests_carry_no_adapter_and_load_nothing(lora_router):
    stub, backend, _ = lora_router
    await stub.Generate(request())
    engine = backend.engines[ServiceKind.TEXT]
    assert engine.seen[-1].adapter == "" and engine.events == []


async def test_least_recently_used_adapter_is_unloaded_beyond_the_bound(lora_router):
    stub, backend, text = lora_router
    engine = backend.engines[ServiceKind.TEXT]
    for name in ("alpha", "beta", "beta", "alpha"):
        await stub.Generate(request(adapter=name))
    assert engine.events == [("load", "alpha"), ("unload", "alpha"), ("load", "beta"), ("unload", "beta"),
                             ("load", "alpha")]
    facts = await text.describe()
    assert facts["adapters"] == {"loaded": ["alpha"], "loads": {"alpha": 2, "beta": 1}, "multiplexing": "local"}


@pytest.mark.parametrize("fields,text", [
    ({"adapter": "nope"},
     "adapter 'nope' is not configured for model text-model; configured adapters: alpha, beta, gone"),
    ({"adapter": "alpha", "model": "vision-model"},
     "adapter 'alpha' is not configured for model vision-model; this model has no adapters"),
])
async def test_unknown_adapter_is_invalid_argument_naming_the_configured_ones(lora_router, fields, text):
    stub, backend, _ = lora_router
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(request(**fields))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert text in info.value.details()
    assert backend.requests == []


async def test_configured_adapter_missing_on_disk_is_internal_and_logged(lora_router, tmp_path, caplog):
    stub, backend, _ = lora_router
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(request(adapter="gone"))
    assert info.value.code() == grpc.StatusCode.INTERNAL  # a server misconfiguration: details stay server-side
    assert str(tmp_path) not in info.value.details()
    assert f"adapter gone of text-model: no adapter_config.json in {tmp_path / 'missing'}" in caplog.text
    assert backend.engines[ServiceKind.TEXT].events == []


async def test_local_multiplexer_loads_once_and_evicts_lru():
    unloaded, loads = [], []

    async def load(name):
        loads.append(name)

        async def unload():
            unloaded.append(name)

        return LoadedAdapter(name, unload)

    mux = LocalMultiplexer(load, capacity=2)
    for name in ("a", "b", "a", "c", "a", "b"):
        assert (await mux(name)).name == name
    assert loads == ["a", "b", "c", "b"] and unloaded == ["b", "c"]
    assert list(mux.models) == ["a", "b"]


def test_garbage_collecting_a_loaded_adapter_does_not_unload_it():
    called = []

    async def unload():
        called.append(True)

    adapter = LoadedAdapter("a", unload)
    assert not hasattr(type(adapter), "__del__")  # only the LRU, which awaits it, calls it
    del adapter
    gc.collect()
    assert called == []


class FakeHandle:
    """Records DeploymentHandle.options(...) chains and the generate calls made on them."""

    def __init__(self, options=None, calls=None):
        self.opts = options or {}
        self.calls = calls if calls is not None else []
        self.generate_into = self

    def options(self, **kw):
        return FakeHandle({**self.opts, **kw}, self.calls)

    def remote(self, request, request_id, address, stream):
        self.calls.append((self.opts, request.adapter))
        return asyncio.ensure_future(_empty_stream(address, stream))


async def _empty_stream(address: str, stream: int) -> None:
    PUBLISHER.sink(address, stream).end()


PUBLISHER = DeltaPublisher()


async def test_serve_backend_sends_the_adapter_as_the_multiplexed_model_id():
    handle = FakeHandle()
    subscriber = DeltaSubscriber("127.0.0.1", "127.0.0.1")
    await subscriber.start()
    backend = ServeHandleBackend({"text": handle}, subscriber)
    msgs = (Message("user", (TextPart("hi"),)),)
    for adapter in ("alpha", "", "alpha", "beta"):
        req = GenerationRequest(model="m", messages=msgs, sampling=Sampling(max_tokens=1), adapter=adapter)
        assert [c.text async for c in backend.stream(ServiceKind.TEXT, req, "r")] == [""]
    await subscriber.stop()
    assert handle.calls == [
        ({"multiplexed_model_id": "alpha"}, "alpha"),
        ({}, ""),
        ({"multiplexed_model_id": "alpha"}, "alpha"),
        ({"multiplexed_model_id": "beta"}, "beta"),
    ]

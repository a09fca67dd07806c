"""Python clients for the Inference API (sync and async): deadlines, retries honouring retry info, TLS, API keys,
typed results. The CLI and the demo use them."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator

import grpc

from gemma_serving.api import admin_pb2 as admin_pb
from gemma_serving.api import admin_pb2_grpc as admin_grpc
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.client.retry import RetryPolicy

_MODALITY_NAMES = {pb.MODALITY_TEXT: "text", pb.MODALITY_IMAGE: "image", pb.MODALITY_AUDIO: "audio"}


def text_part(text: str) -> pb.Part:
    return pb.Part(text=text)


def image_part(data: bytes, mime_type: str = "") -> pb.Part:
    return pb.Part(image=pb.Image(data=data, mime_type=mime_type))


def audio_part(data: bytes, mime_type: str = "") -> pb.Part:
    return pb.Part(audio=pb.Audio(data=data, mime_type=mime_type))


def message(*parts: pb.Part | str, role: str = "user") -> pb.Message:
    """A message from parts; plain strings become text parts."""
    return pb.Message(role=role, parts=[text_part(p) if isinstance(p, str) else p for p in parts])


@dataclass(frozen=True)
class ToolCallResult:
    id: str
    name: str
    arguments: dict


@dataclass(frozen=True)
class GenerateResult:
    """A typed view of GenerateResponse."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    request_id: str
    tool_calls: list[ToolCallResult] = field(default_factory=list)

    @classmethod
    def from_pb(cls, reply: pb.GenerateResponse) -> GenerateResult:
        calls = [ToolCallResult(c.id, c.name, json.loads(c.arguments_json or "{}")) for c in reply.tool_calls]
        reason = pb.FinishReason.Name(reply.finish_reason).removeprefix("FINISH_REASON_").lower()
        return cls(reply.text, reason, reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.request_id,
                   calls)


def build_request(model: str, messages: list[pb.Message], **options) -> pb.GenerateRequest:
    """A GenerateRequest; sampling fields (max_tokens, temperature, ...) and request fields (tools, ...) by name."""
    sampling_fields = set(pb.SamplingParams.DESCRIPTOR.fields_by_name)
    sampling = {k: v for k, v in options.items() if k in sampling_fields}
    rest = {k: v for k, v in options.items() if k not in sampling_fields}
    return pb.GenerateRequest(model=model, messages=messages, sampling=pb.SamplingParams(**sampling), **rest)


def channel_credentials(tls: bool, root_certificates: bytes | None, client_cert: tuple[bytes, bytes] | None):
    if not tls:
        return None
    key, chain = client_cert if client_cert else (None, None)
    return grpc.ssl_channel_credentials(root_certificates, key, chain)


def tls_options(server_name: str | None) -> list[tuple[str, str]]:
    """Verify the server certificate against `server_name` instead of the target's host (e.g. 127.0.0.1 vs a
    certificate for localhost)."""
    return [("grpc.ssl_target_name_override", server_name)] if server_name else []


class _Options:
    def __init__(self, api_key: str | None, timeout_s: float, retry: RetryPolicy) -> None:
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout_s = timeout_s
        self.retry = retry


class GemmaClient:
    """Blocking client. `timeout_s` is each call's gRPC deadline; retries stay within it."""

    def __init__(self, target: str = "127.0.0.1:50051", *, timeout_s: float = 120.0, api_key: str | None = None,
                 tls: bool = False, root_certificates: bytes | None = None,
                 client_cert: tuple[bytes, bytes] | None = None, retry: RetryPolicy = RetryPolicy(),
                 server_name: str | None = None) -> None:
        creds = channel_credentials(tls, root_certificates, client_cert)
        self._channel = (grpc.secure_channel(target, creds, options=tls_options(server_name)) if creds
                         else grpc.insecure_channel(target))
        self._stub = pb_grpc.InferenceStub(self._channel)
        self._admin = admin_grpc.AdminStub(self._channel)
        self._o = _Options(api_key, timeout_s, retry)

    @property
    def stub(self) -> pb_grpc.InferenceStub:
        return self._stub

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GemmaClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request):
        deadline = time.monotonic() + self._o.timeout_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(request, timeout=max(deadline - time.monotonic(), 0.001), metadata=self._o.metadata)
            except grpc.RpcError as error:
                delay = self._o.retry.delay(error, attempt)
                if delay is None or time.monotonic() + delay >= deadline:
                    raise
                time.sleep(delay)

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self._call(self._stub.ListModels, pb.ListModelsRequest()).models)

    def register_adapter(self, model: str, name: str, source: str, *, replace: bool = False
                         ) -> admin_pb.RegisteredAdapter:
        """Admin: make the PEFT adapter at `source` servable as `name` on `model` (no restart)."""
        request = admin_pb.RegisterAdapterRequest(model=model, name=name, source=source, replace=replace)
        return self._call(self._admin.RegisterAdapter, request).adapter

    def unregister_adapter(self, model: str, name: str) -> admin_pb.RegisteredAdapter:
        """Admin: stop serving the registered adapter `name` of `model`."""
        return self._call(self._admin.UnregisterAdapter,
                          admin_pb.UnregisterAdapterRequest(model=model, name=name)).adapter

    def model_for(self, modalities: set[str]) -> str:
        """The first served model whose inputs cover `modalities` (the one with the fewest other inputs)."""
        candidates = [m for m in self.list_models()
                      if modalities <= {_MODALITY_NAMES[x] for x in m.input_modalities}]
        if not candidates:
            raise LookupError(f"no served model accepts {sorted(modalities)}")
        return min(candidates, key=lambda m: len(m.input_modalities)).name

    def generate(self, model: str, messages: list[pb.Message], **options) -> pb.GenerateResponse:
        return self._call(self._stub.Generate, build_request(model, messages, **options))

    def generate_result(self, model: str, messages: list[pb.Message], **options) -> GenerateResult:
        return GenerateResult.from_pb(self.generate(model, messages, **options))

    def stream(self, model: str, messages: list[pb.Message], **options) -> Iterator[pb.GenerateChunk]:
        """Streamed chunks. Retries happen only before the first chunk, so no text is ever repeated."""
        request = build_request(model, messages, **options)
        deadline = time.monotonic() + self._o.timeout_s
        attempt = 0
        while True:
            attempt += 1
            call = self._stub.GenerateStream(request, timeout=max(deadline - time.monotonic(), 0.001),
                                             metadata=self._o.metadata)
            try:
                first = next(call)
            except StopIteration:
                return
            except grpc.RpcError as error:
                delay = self._o.retry.delay(error, attempt)
                if delay is None or time.monotonic() + delay >= deadline:
                    raise
                time.sleep(delay)
                continue
            yield first
            yield from call
            return


class AsyncGemmaClient:
    """grpc.aio client with the same options as GemmaClient."""

    def __init__(self, target: str = "127.0.0.1:50051", *, timeout_s: float = 120.0, api_key: str | None = None,
                 tls: bool = False, root_certificates: bytes | None = None,
                 client_cert: tuple[bytes, bytes] | None = None, retry: RetryPolicy = RetryPolicy(),
                 server_name: str | None = None) -> None:
        creds = channel_credentials(tls, root_certificates, client_cert)
        self._channel = (grpc.aio.secure_channel(target, creds, options=tls_options(server_name)) if creds
                         else grpc.aio.insecure_channel(target))
        self._stub = pb_grpc.InferenceStub(self._channel)
        self._o = _Options(api_key, timeout_s, retry)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncGemmaClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, method, request):
        deadline = time.monotonic() + self._o.timeout_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return await method(request, timeout=max(deadline - time.monotonic(), 0.001),
                                    metadata=self._o.metadata)
            except grpc.aio.AioRpcError as error:
                delay = self._o.retry.delay(error, attempt)
                if delay is None or time.monotonic() + delay >= deadline:
                    raise
                await asyncio.sleep(delay)

    async def list_models(self) -> list[pb.ModelInfo]:
        return list((await self._call(self._stub.ListModels, pb.ListModelsRequest())).models)

    async def generate(self, model: str, messages: list[pb.Message], **options) -> pb.GenerateResponse:
        return await self._call(self._stub.Generate, build_request(model, messages, **options))

    async def generate_result(self, model: str, messages: list[pb.Message], **options) -> GenerateResult:
        return GenerateResult.from_pb(await self.generate(model, messages, **options))

    async def stream(self, model: str, messages: list[pb.Message], **options) -> AsyncIterator[pb.GenerateChunk]:
        """Streamed chunks; retried only before the first chunk."""
        request = build_request(model, messages, **options)
        deadline = time.monotonic() + self._o.timeout_s
        attempt = 0
        while True:
            attempt += 1
            call = self._stub.GenerateStream(request, timeout=max(deadline - time.monotonic(), 0.001),
                                             metadata=self._o.metadata)
            try:
                first = await call.read()
            except grpc.aio.AioRpcError as error:
                delay = self._o.retry.delay(error, attempt)
                if delay is None or time.monotonic() + delay >= deadline:
                    raise
                await asyncio.sleep(delay)
                continue
            if first is grpc.aio.EOF:
                return
            yield first
            while (chunk := await call.read()) is not grpc.aio.EOF:
                yield chunk
            return

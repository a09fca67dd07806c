"""A small synchronous client for the Inference API, used by the CLI, the demo and other Python services."""

from __future__ import annotations

from typing import Iterator

import grpc

from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc

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


class GemmaClient:
    """Blocking client. `timeout_s` becomes the gRPC deadline of each call."""

    def __init__(self, target: str = "127.0.0.1:50051", *, timeout_s: float = 120.0) -> None:
        self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.InferenceStub(self._channel)
        self._timeout_s = timeout_s

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GemmaClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self._stub.ListModels(pb.ListModelsRequest(), timeout=self._timeout_s).models)

    def model_for(self, modalities: set[str]) -> str:
        """The first served model whose inputs cover `modalities` (the smallest such model comes first)."""
        candidates = [
            m for m in self.list_models() if modalities <= {_MODALITY_NAMES[x] for x in m.input_modalities}
        ]
        if not candidates:
            raise LookupError(f"no served model accepts {sorted(modalities)}")
        return min(candidates, key=lambda m: len(m.input_modalities)).name

    def generate(self, model: str, messages: list[pb.Message], **sampling) -> pb.GenerateResponse:
        request = pb.GenerateRequest(model=model, messages=messages, sampling=pb.SamplingParams(**sampling))
        return self._stub.Generate(request, timeout=self._timeout_s)

    def stream(self, model: str, messages: list[pb.Message], **sampling) -> Iterator[pb.GenerateChunk]:
        request = pb.GenerateRequest(model=model, messages=messages, sampling=pb.SamplingParams(**sampling))
        return self._stub.GenerateStream(request, timeout=self._timeout_s)

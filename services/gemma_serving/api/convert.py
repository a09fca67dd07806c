"""Conversion between the wire types (gemma.serving.v1) and the domain types. Limits are checked elsewhere."""

from __future__ import annotations

from gemma_serving.api import inference_pb2 as pb
from gemma_serving.engines.types import (
    AudioPart,
    Chunk,
    FinishReason,
    GenerationRequest,
    ImagePart,
    Message,
    Part,
    Sampling,
    TextPart,
)
from gemma_serving.errors import InvalidRequest

_FINISH_TO_PB = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.ABORT: pb.FINISH_REASON_ABORT,
}
MODALITY_TO_PB = {"text": pb.MODALITY_TEXT, "image": pb.MODALITY_IMAGE, "audio": pb.MODALITY_AUDIO}


def _part(part: pb.Part, where: str) -> Part:
    which = part.WhichOneof("content")
    if which == "text":
        return TextPart(part.text)
    if which == "image":
        return ImagePart(part.image.data, part.image.mime_type)
    if which == "audio":
        return AudioPart(part.audio.data, part.audio.mime_type)
    raise InvalidRequest(f"{where} is empty; set one of text, image, audio")


def request_from_pb(req: pb.GenerateRequest) -> GenerationRequest:
    """The domain request (structure only: limits and defaults are the router's validation)."""
    messages = [
        Message(m.role, tuple(_part(p, f"messages[{i}].parts[{j}]") for j, p in enumerate(m.parts)))
        for i, m in enumerate(req.messages)
    ]
    s = req.sampling
    sampling = Sampling(
        max_tokens=s.max_tokens if s.HasField("max_tokens") else None,
        temperature=s.temperature if s.HasField("temperature") else None,
        top_p=s.top_p if s.HasField("top_p") else None,
        top_k=s.top_k if s.HasField("top_k") else None,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(s.stop),
    )
    return GenerationRequest(req.model, tuple(messages), sampling)


def usage_pb(chunk: Chunk) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=chunk.prompt_tokens,
        completion_tokens=chunk.completion_tokens,
        total_tokens=chunk.prompt_tokens + chunk.completion_tokens,
    )


def chunk_to_pb(chunk: Chunk, request_id: str) -> pb.GenerateChunk:
    out = pb.GenerateChunk(request_id=request_id, text=chunk.text)
    if chunk.finish_reason is not None:
        out.finish_reason = _FINISH_TO_PB[chunk.finish_reason]
        out.usage.CopyFrom(usage_pb(chunk))
    return out


def response_to_pb(text: str, last: Chunk, request_id: str, model: str) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        request_id=request_id,
        model=model,
        text=text,
        finish_reason=_FINISH_TO_PB[last.finish_reason],
        usage=usage_pb(last),
    )

"""Python client SDK for gemma.serving.v1 (sync and async) and prompt helpers."""

from gemma_serving.client.retry import RetryPolicy
from gemma_serving.client.sdk import (
    AsyncGemmaClient,
    GemmaClient,
    GenerateResult,
    audio_part,
    build_request,
    image_part,
    message,
    text_part,
)

__all__ = [
    "AsyncGemmaClient", "GemmaClient", "GenerateResult", "RetryPolicy", "audio_part", "build_request", "image_part",
    "message", "text_part",
]

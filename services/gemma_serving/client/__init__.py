"""Python client SDK for gemma.serving.v1 and prompt helpers."""

from gemma_serving.client.sdk import GemmaClient, audio_part, image_part, message, text_part

__all__ = ["GemmaClient", "audio_part", "image_part", "message", "text_part"]

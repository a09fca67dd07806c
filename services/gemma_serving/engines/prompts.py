"""Turning domain messages into the chat-template input Gemma's tokenizers expect."""

from __future__ import annotations

from typing import Any

from gemma_serving.engines.types import AudioPart, DecodedAudio, DecodedImage, ImagePart, Message, TextPart

_PLACEHOLDER_TYPES = {ImagePart: "image", DecodedImage: "image", AudioPart: "audio", DecodedAudio: "audio"}


def chat_messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """HF chat messages: content is a list of {"type": "text", "text": ...} / {"type": "image"} / {"type": "audio"}.

    The chat template renders media parts as the model's placeholder tokens, in order; the engine passes the media
    itself separately, in the same order.
    """
    out = []
    for message in messages:
        content: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, TextPart):
                content.append({"type": "text", "text": part.text})
            else:
                content.append({"type": _PLACEHOLDER_TYPES[type(part)]})
        out.append({"role": message.role, "content": content})
    return out

"""Turning a domain request into the chat-template input Gemma's tokenizers expect.

Gemma's chat template knows two roles (user, model) and folds a system message into the first user turn, so:
tools are offered in the system turn, an assistant's tool calls become its turn's text (the JSON it would have
written), and tool results become a user turn. Gemma 3n audio tasks add the task instruction to the last user turn.
"""

from __future__ import annotations

import json
from typing import Any

from gemma_serving.engines.tool_calls import tools_prompt
from gemma_serving.engines.types import (
    AudioPart,
    AudioTask,
    DecodedAudio,
    DecodedImage,
    GenerationRequest,
    ImagePart,
    Message,
    TextPart,
)

_PLACEHOLDER_TYPES = {ImagePart: "image", DecodedImage: "image", AudioPart: "audio", DecodedAudio: "audio"}


def audio_task_instruction(task: AudioTask) -> str:
    """The Gemma 3n prompt for an audio task."""
    if task.task == "translate":
        return f"Translate this audio into {task.target_language}."
    return "Transcribe this audio."


def _content(message: Message) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, TextPart):
            content.append({"type": "text", "text": part.text})
        else:
            content.append({"type": _PLACEHOLDER_TYPES[type(part)]})
    if message.tool_calls:
        calls = [{"name": c.name, "arguments": json.loads(c.arguments_json)} for c in message.tool_calls]
        content.append({"type": "text", "text": json.dumps(calls[0] if len(calls) == 1 else calls)})
    return content


def chat_messages(request: GenerationRequest) -> list[dict[str, Any]]:
    """HF chat messages: content is a list of {"type": "text", "text": ...} / {"type": "image"} / {"type": "audio"}.

    Media parts become the model's placeholder tokens, in order; the engine passes the media itself separately, in
    the same order.
    """
    out: list[dict[str, Any]] = []
    offer_tools = bool(request.tools) and request.tool_choice.mode != "none"
    if offer_tools:
        system = {"role": "system", "content": [{"type": "text", "text": tools_prompt(request.tools)}]}
        out.append(system)
    for message in request.messages:
        content = _content(message)
        if message.role == "system" and offer_tools:
            system["content"] = content + [{"type": "text", "text": "\n\n"}] + system["content"]
            continue
        if message.role == "tool":
            content = [{"type": "text", "text": f"Result of call {message.tool_call_id}:\n"}] + content
            if out and out[-1]["role"] == "user":  # several results answer one turn of calls
                out[-1]["content"] += [{"type": "text", "text": "\n"}] + content
                continue
            out.append({"role": "user", "content": content})
            continue
        out.append({"role": message.role, "content": content})
    if request.audio_task is not None:
        out[-1]["content"].append({"type": "text", "text": audio_task_instruction(request.audio_task)})
    return out

"""Prompt helpers for what Gemma users do: function calling, multimodal analysis and comparison, multilingual and
culturally aware prompts. They build gemma.serving.v1 messages and tools; nothing here talks to the server."""

from __future__ import annotations

import json

from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client.sdk import image_part, message


def tool(name: str, description: str, properties: dict[str, dict], required: list[str] | None = None) -> pb.Tool:
    """A function definition: `properties` maps argument names to JSON Schemas, all required unless said."""
    schema = {"type": "object", "properties": properties,
              "required": list(properties) if required is None else required, "additionalProperties": False}
    return pb.Tool(name=name, description=description, parameters_json=json.dumps(schema))


def force(tool_name: str) -> pb.ToolChoice:
    """tool_choice that makes the model call `tool_name` (a schema-valid call, by constrained decoding)."""
    return pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, function_name=tool_name)


def tool_result(call_id: str, result: object) -> pb.Message:
    """The message that returns a tool's result (any JSON-serialisable value) to the model."""
    text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
    return pb.Message(role="tool", tool_call_id=call_id, parts=[pb.Part(text=text)])


def analyze_image(image: bytes, question: str = "Describe this image in detail.") -> list[pb.Message]:
    return [message(image_part(image), question)]


def compare_images(images: list[bytes], aspect: str = "content, style and notable differences") -> list[pb.Message]:
    """One message with every image, labelled, and a request to compare them."""
    parts: list = []
    for i, data in enumerate(images, 1):
        parts += [f"Image {i}:", image_part(data)]
    parts.append(f"Compare these {len(images)} images: {aspect}. Refer to them by number.")
    return [message(*parts)]


def multilingual(text: str, target_language: str, *, cultural_context: str | None = None,
                 formality: str = "neutral") -> list[pb.Message]:
    """Ask for an answer in `target_language`, adapted to a cultural context when given."""
    system = f"Answer in {target_language}, with a {formality} register."
    if cultural_context:
        system += (f" Adapt examples, units, names and idioms to {cultural_context}, and avoid assumptions that do "
                   "not hold there.")
    return [message(system, role="system"), message(text)]

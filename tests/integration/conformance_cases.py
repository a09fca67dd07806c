"""The requests the vLLM conformance test sends to both servers, the differences we keep on purpose (each with its
reason), and the structural comparison of two responses. Used by test_vllm_conformance.py."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MODEL = "gemma-3-tiny"
HI = [{"role": "user", "content": "Tell me about the sea."}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "required": ["city"],
                                                           "properties": {"city": {"type": "string",
                                                                                   "enum": ["Paris", "Oslo"]}}}}}


@dataclass(frozen=True)
class Case:
    """One request. `same_text`: greedy and identical prompts, so both servers must generate the same text."""

    name: str
    endpoint: str  # "chat" or "completions"
    body: dict
    same_text: bool = True
    #: Set when we differ from vLLM on purpose: (our status, vLLM's status, why).
    differs: tuple[int, int, str] | None = None
    #: False where the prompts differ on purpose (TOOLS_PROMPT): then prompt token counts are not compared.
    same_prompt: bool = True

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


def chat(name: str, same_text: bool = True, differs=None, same_prompt: bool = True, **body) -> Case:
    return Case(name, "chat", {"model": MODEL, "messages": HI, "max_tokens": 16, "temperature": 0, **body},
                same_text, differs, same_prompt)


def completion(name: str, same_text: bool = True, differs=None, **body) -> Case:
    return Case(name, "completions", {"model": MODEL, "prompt": "The sea is", "max_tokens": 16, "temperature": 0,
                                      **body}, same_text, differs)


SAMPLED = dict(same_text=False)  # seeded sampling: same structure, text may differ by numerics
#: Gemma 3's chat template does not render `tools`, so vLLM's prompt leaves them out; ours offers them in the system
#: turn (engines/tool_calls.tools_prompt), which is how Gemma learns of them. vLLM runs with the pythonic parser (it
#: has no Gemma 3 one) so that its auto / required / named tool paths run at all.
TOOLS_PROMPT = dict(same_text=False, same_prompt=False)
CASES: list[Case] = [
    chat("chat greedy"),
    chat("chat with system", messages=[{"role": "system", "content": "Be brief."}, *HI]),
    chat("chat multi-turn", messages=[*HI, {"role": "assistant", "content": "It is big."},
                                      {"role": "user", "content": "And deep?"}]),
    chat("chat max_completion_tokens", max_tokens=None, max_completion_tokens=8),
    chat("chat with a reply sent back as received", messages=[*HI, {
        "role": "assistant", "content": "It is big.", "refusal": None, "annotations": None, "audio": None,
        "function_call": None, "tool_calls": []}, {"role": "user", "content": "And deep?"}]),
    chat("chat stop list", stop=["e", "a"]),
    chat("chat stop string", stop="s"),
    chat("chat seed", temperature=1.0, seed=42, **SAMPLED),
    chat("chat top_p", temperature=0.8, top_p=0.5, seed=1, **SAMPLED),
    chat("chat top_k", temperature=1.0, top_k=5, seed=2, **SAMPLED),
    chat("chat min_p", temperature=1.0, min_p=0.2, seed=3, **SAMPLED),
    chat("chat repetition_penalty", repetition_penalty=1.3),
    chat("chat presence_penalty", presence_penalty=1.0),
    chat("chat frequency_penalty", frequency_penalty=1.0),
    chat("chat logprobs", logprobs=True, top_logprobs=3),
    chat("chat n greedy", n=2),
    chat("chat n seeded", n=3, temperature=1.0, seed=7, **SAMPLED),
    chat("chat ignore_eos", ignore_eos=True, max_tokens=20),
    chat("chat json_object", response_format={"type": "json_object"}, max_tokens=32, same_text=False),
    chat("chat json_schema", max_tokens=32, same_text=False, response_format={
        "type": "json_schema", "json_schema": {"name": "city", "schema": {
            "type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}}, "required": ["city"]}}}),
    chat("chat tools none", tools=[WEATHER], tool_choice="none"),
    chat("chat tools auto", tools=[WEATHER], tool_choice="auto", max_tokens=48, **TOOLS_PROMPT),
    chat("chat tools required", tools=[WEATHER], tool_choice="required", max_tokens=48, **TOOLS_PROMPT),
    chat("chat tools named", tools=[WEATHER], max_tokens=48, **TOOLS_PROMPT,
         tool_choice={"type": "function", "function": {"name": "get_weather"}}),
    chat("chat stream", stream=True),
    chat("chat stream usage", stream=True, stream_options={"include_usage": True}),
    chat("chat stream logprobs", stream=True, logprobs=True, top_logprobs=2),
    chat("chat stream n", stream=True, n=2, stream_options={"include_usage": True}),
    chat("chat stream stop", stream=True, stop=["e"]),
    completion("completion greedy"),
    completion("completion prompt list", prompt=["The sea is"]),
    completion("completion echo", echo=True),
    completion("completion logprobs", logprobs=2),
    completion("completion n", n=2),
    completion("completion stop", stop=["e"]),
    completion("completion seed", temperature=1.0, seed=5, **SAMPLED),
    completion("completion stream", stream=True),
    completion("completion stream usage", stream=True, stream_options={"include_usage": True}),
    completion("completion stream echo", stream=True, echo=True),
    completion("completion stream logprobs", stream=True, logprobs=1),
    # Bad parameters: both refuse them with the same status.
    chat("bad temperature", temperature=3),
    chat("bad top_p", top_p=0),
    chat("bad max_tokens", max_tokens=0),
    chat("bad n", n=0),
    chat("bad presence_penalty", presence_penalty=3),
    chat("bad repetition_penalty", repetition_penalty=0),
    chat("bad top_logprobs", logprobs=True, top_logprobs=30),
    chat("max_tokens past the context", max_tokens=100_000),
    chat("missing messages", messages=None),
    chat("unknown model", model="gemma-99"),
    completion("completion suffix", suffix=" the end."),
    chat("stream_options without stream", stream_options={"include_usage": True}),
    chat("unknown parameter", frobnicate=True, differs=(
        400, 200, "vLLM ignores unknown fields (with a log line); we refuse them so that a typo is not silently "
        "ignored (issue 15)")),
    chat("non-empty logit_bias", logit_bias={"5": 10}, differs=(
        400, 200, "logit_bias is not implemented here; refused rather than ignored")),
    completion("completion echo with logprobs", echo=True, logprobs=1, differs=(
        400, 200, "we do not return prompt logprobs, which echo with logprobs needs")),
    completion("completion default max_tokens", max_tokens=None, same_text=False, differs=(
        200, 200, "unset max_tokens is OpenAI's and vLLM's 16 on /v1/completions, the model's default_max_tokens "
        "here (64 for the tiny models)")),
]

_NOT_OPENAI = "vLLM's own extension, not part of OpenAI's API"
_NULL_IN_OPENAI = "an OpenAI field we do not fill (always null or empty here); clients treat it as optional"
#: Keys only vLLM's responses have, by path ("*" for any list position), each with why we do not send them.
VLLM_ONLY = {
    **dict.fromkeys(["prompt_logprobs", "prompt_token_ids", "prompt_text", "kv_transfer_params",
                     "ec_transfer_params", "metrics", "choices.*.stop_reason", "choices.*.token_ids",
                     "choices.*.routed_experts", "choices.*.prompt_logprobs", "choices.*.prompt_token_ids",
                     "choices.*.message.reasoning", "choices.*.delta.reasoning"], _NOT_OPENAI),
    **dict.fromkeys(["service_tier", "system_fingerprint", "choices.*.message.refusal",
                     "choices.*.message.annotations", "choices.*.message.audio", "choices.*.message.function_call",
                     "usage.prompt_tokens_details", "usage.completion_tokens_details"], _NULL_IN_OPENAI),
    "choices.*.message.tool_calls": "vLLM sends [] when the model called no tool; we leave the key out",
    "choices.*.delta.tool_calls": "vLLM sends [] on deltas without calls; we leave the key out",
    "choices.*.delta.content": "vLLM's finishing chunk may carry content '' where there is no new text; ours leaves "
                               "the key out (the streamed texts are compared in full)",
}
#: Keys only ours have, each with why.
OURS_ONLY = {
    "timing": "the per-response timing extension (issue 15: queue time, TTFT, generation time, tokens/s)",
    "choices.*.logprobs": "OpenAI's stream chunks carry logprobs: null; vLLM leaves the unset key out of chunks",
}


def _path_key(path: list[str]) -> str:
    return ".".join("*" if p.isdigit() else p for p in path)


def shape_diff(ours: Any, theirs: Any, path: list[str] | None = None) -> list[str]:
    """Differences in keys and value types between two JSON values, ignoring documented keys; a value that is
    null on one side may be anything on the other (absent logprobs, a tool call's null content)."""
    path = path or []
    where = _path_key(path) or "<root>"
    if ours is None or theirs is None:
        return []
    if isinstance(ours, dict) and isinstance(theirs, dict):
        if path and path[-2:-1] == ["top_logprobs"] and path[-1].isdigit():
            # The legacy completions shape maps token text -> logprob: its keys are data (the tokens the model
            # chose, which batching can change), not structure.
            return [d for a, b in zip(ours.values(), theirs.values()) for d in shape_diff(a, b, [*path, "*"])]
        out = []
        for key in sorted(set(ours) | set(theirs)):
            sub = _path_key([*path, key])
            if key not in ours and sub not in VLLM_ONLY:
                out.append(f"{sub}: only vLLM has it")
            elif key not in theirs and sub not in OURS_ONLY:
                out.append(f"{sub}: only we have it")
            elif key in ours and key in theirs:
                out += shape_diff(ours[key], theirs[key], [*path, key])
        return out
    if isinstance(ours, list) and isinstance(theirs, list):
        if ours and theirs:
            return [d for i, (a, b) in enumerate(zip(ours, theirs)) for d in shape_diff(a, b, [*path, str(i)])]
        return []
    kinds = {bool: "bool", int: "number", float: "number", str: "string", list: "list", dict: "object"}
    if kinds.get(type(ours)) != kinds.get(type(theirs)):
        return [f"{where}: {kinds.get(type(ours))} here, {kinds.get(type(theirs))} in vLLM"]
    return []


@dataclass
class Reply:
    """What one server answered: status, and the body or the stream's events (JSON, without [DONE])."""

    status: int
    body: Any = None
    events: list[dict] = field(default_factory=list)
    done: bool = False

    def texts(self, endpoint: str) -> dict[int, str]:
        """Generated text per choice index."""
        out: dict[int, str] = {}
        if self.events:
            for event in self.events:
                for c in event.get("choices", []):
                    piece = c.get("text") if endpoint == "completions" else (c.get("delta") or {}).get("content")
                    out[c["index"]] = out.get(c["index"], "") + (piece or "")
            return out
        for c in self.body["choices"]:
            out[c["index"]] = c["text"] if endpoint == "completions" else (c["message"].get("content") or "")
        return out

    def finish_reasons(self) -> dict[int, str]:
        choices = [c for e in self.events for c in e.get("choices", [])] if self.events else self.body["choices"]
        return {c["index"]: c["finish_reason"] for c in choices if c.get("finish_reason")}

    def usage(self) -> dict | None:
        if self.events:
            return next((e["usage"] for e in reversed(self.events) if e.get("usage")), None)
        return self.body.get("usage")


def parse_sse(lines) -> tuple[list[dict], bool]:
    events, done = [], False
    for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            done = True
        else:
            events.append(json.loads(data))
    return events, done

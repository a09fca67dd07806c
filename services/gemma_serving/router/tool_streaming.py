"""Streaming replies to requests that offer tools: text flows as it comes, tool calls arrive once known.

Gemma 3 has no tool tokens, so a call is only certain once the reply is complete. What could still become a call is
held back: a reply that starts like one (`{`, `[`, a fence, `FUNCTION_CALL`, a declared tool's name followed by `(`),
and anything from a fence or `FUNCTION_CALL` marker on. Everything else streams at once, like vLLM's streaming tool
parsers, so time to first token means the same with and without tools. At the end the whole reply is parsed: calls
come on the last chunk (finish reason TOOL_CALLS, the held text dropped, prose before them kept as text); otherwise
the held text follows.
"""

from __future__ import annotations

import dataclasses
from typing import AsyncIterator

from gemma_serving.engines.tool_calls import parse_tool_calls
from gemma_serving.engines.types import Chunk, FinishReason, Tool

#: Markers after which the rest of a reply may be a call (the parser finds fenced and FUNCTION_CALL calls anywhere).
MARKERS = ("```", "FUNCTION_CALL")
_OPENERS = ("{", "[")


def reply_start(text: str, names: tuple[str, ...]) -> bool | None:
    """Whether a reply beginning with `text` may be a call: True (hold it), False (prose), None (cannot tell yet)."""
    s = text.lstrip()
    if not s:
        return None
    if s.startswith(_OPENERS) or any(s.startswith(m) for m in MARKERS):
        return True
    if any(m.startswith(s) for m in MARKERS):
        return None
    for name in names:
        if s.startswith(name):
            rest = s[len(name):].lstrip()
            if not rest:
                return None
            if rest[0] == "(":
                return True
        elif name.startswith(s):
            return None
    return False


def _marker_split(text: str) -> int:
    """Where held text must begin in streamed prose: at the first marker, or at a trailing partial marker."""
    cut = len(text)
    for marker in MARKERS:
        at = text.find(marker)
        if at >= 0:
            cut = min(cut, at)
            continue
        for n in range(min(len(marker) - 1, len(text)), 0, -1):
            if text.endswith(marker[:n]):
                cut = min(cut, len(text) - n)
                break
    return cut


async def stream_with_tool_calls(stream: AsyncIterator[Chunk], tools: tuple[Tool, ...]) -> AsyncIterator[Chunk]:
    """`stream` with tool calls parsed out (see module docstring). Closing this closes `stream`."""
    names = tuple(t.name for t in tools)
    sent: list[str] = []  # text already streamed
    held = ""  # text that may belong to a call
    deciding, holding = True, False
    last: Chunk | None = None
    try:
        async for chunk in stream:
            last = chunk
            held += chunk.text
            if holding:
                continue
            if deciding:
                verdict = reply_start(held, names)
                if verdict is None:
                    continue
                deciding = False
                if verdict:
                    holding = True
                    continue
            cut = _marker_split(held)
            out, held = held[:cut], held[cut:]
            holding = held.startswith(MARKERS)
            if out or chunk.finish_reason is not None:
                sent.append(out)
                if chunk.finish_reason is not None and not held:
                    yield dataclasses.replace(chunk, text=out)
                    return
                yield dataclasses.replace(chunk, text=out, finish_reason=None)
    finally:
        await stream.aclose()
    if last is None:
        return
    calls = parse_tool_calls("".join(sent) + held, tools)
    if calls:
        yield dataclasses.replace(last, text="", tool_calls=calls, finish_reason=FinishReason.TOOL_CALLS)
    else:
        yield dataclasses.replace(last, text=held)

"""Fine-tuning data: JSONL chat conversations, validated line by line, tokenized with the model's chat template.

One conversation per line: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``. An
optional system message comes first; then user and assistant turns alternate, starting with user, and at least one
assistant turn is there to learn from. Errors name the file and line and say what is allowed; they never quote the
conversation's text.

Tokenization renders the whole conversation with the model's chat template (the same text the engine builds at
serving time) and labels only the tokens of assistant turns, including their end-of-turn marker, so the loss is on
what the model should say and the adapter learns to stop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma_serving.errors import InvalidRequest

ROLES = ("system", "user", "assistant")
#: Labels of tokens that carry no loss (PyTorch cross-entropy's ignore index).
IGNORE_INDEX = -100
MAX_LINE_CHARS = 10 * 2**20


@dataclass(frozen=True)
class Conversation:
    """One validated conversation and the line it came from."""

    line: int
    messages: tuple[dict[str, str], ...]


@dataclass(frozen=True)
class TokenizedConversation:
    """Token ids and labels (IGNORE_INDEX outside assistant turns) of one conversation."""

    line: int
    input_ids: list[int]
    labels: list[int]


def load_conversations(path: str | Path) -> list[Conversation]:
    """Read and validate a JSONL dataset; raise InvalidRequest naming the first bad line."""
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"dataset {path} does not exist or is not a file")
    conversations = []
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            conversations.append(parse_line(raw, number, str(path)))
    if not conversations:
        raise InvalidRequest(f"dataset {path} holds no conversations (expected one JSON object per line)")
    return conversations


def parse_line(raw: str, number: int, where: str = "dataset") -> Conversation:
    """Validate one JSONL line into a Conversation."""
    at = f"{where}:{number}"
    if len(raw) > MAX_LINE_CHARS:
        raise InvalidRequest(f"{at}: line is longer than {MAX_LINE_CHARS} characters")
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"{at}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict) or "messages" not in record:
        raise InvalidRequest(f'{at}: expected an object with a "messages" list')
    unknown = sorted(set(record) - {"messages"})
    if unknown:
        raise InvalidRequest(f"{at}: unknown keys {', '.join(k[:32] for k in unknown)}; only \"messages\" is allowed")
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(f'{at}: "messages" must be a non-empty list')
    checked = [_check_message(m, i, at) for i, m in enumerate(messages)]
    _check_order(checked, at)
    return Conversation(number, tuple(checked))


def _check_message(message: Any, index: int, at: str) -> dict[str, str]:
    where = f"{at}: messages[{index}]"
    if not isinstance(message, dict):
        raise InvalidRequest(f'{where} must be an object with "role" and "content"')
    unknown = sorted(set(message) - {"role", "content"})
    if unknown:
        raise InvalidRequest(f"{where}: unknown keys {', '.join(k[:32] for k in unknown)}; allowed: role, content")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        shown = role[:32] if isinstance(role, str) else type(role).__name__
        raise InvalidRequest(f"{where}.role must be one of {', '.join(ROLES)}, got '{shown}'")
    if not isinstance(content, str) or not content.strip():
        raise InvalidRequest(f"{where}.content must be a non-empty string")
    return {"role": role, "content": content}


def _check_order(messages: Sequence[dict[str, str]], at: str) -> None:
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    for i, message in enumerate(turns):
        index = i + (len(messages) - len(turns))
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise InvalidRequest(
                f"{at}: messages[{index}].role must be {expected}: after an optional first system message, user "
                f"and assistant turns alternate, starting with user; got {message['role']}"
            )
    if not any(m["role"] == "assistant" for m in turns):
        raise InvalidRequest(f"{at}: the conversation has no assistant message to learn from")


def assistant_spans(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns (through the end-of-turn marker)."""
    spans = []
    full = tokenizer.apply_chat_template(list(messages), tokenize=False)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(list(messages[:i]), tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=False)
        if not (through.startswith(prompt) and full.startswith(through)):
            raise InvalidRequest("the model's chat template does not render conversations incrementally; "
                                 "assistant turns cannot be located for the loss")
        spans.append((len(prompt), len(through)))
    return full, spans


def tokenize_conversation(tokenizer: Any, conversation: Conversation, max_length: int) -> TokenizedConversation:
    """Token ids of the rendered conversation (cut at `max_length`) with labels on assistant tokens only."""
    text, spans = assistant_spans(tokenizer, conversation.messages)
    # The template writes <bos> itself; offsets map each token back to the rendered text.
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"][:max_length], encoded["offset_mapping"][:max_length]
    labels = [
        token if any(start <= begin and end <= stop for start, stop in spans) else IGNORE_INDEX
        for token, (begin, end) in zip(ids, offsets)
    ]
    if all(label == IGNORE_INDEX for label in labels):
        raise InvalidRequest(
            f"dataset line {conversation.line}: no assistant token falls within training.max_length {max_length} "
            f"(the conversation has {len(encoded['input_ids'])} tokens)"
        )
    return TokenizedConversation(conversation.line, ids, labels)


def tokenize_dataset(tokenizer: Any, conversations: Sequence[Conversation], max_length: int
                     ) -> list[TokenizedConversation]:
    """Tokenize every conversation (see `tokenize_conversation`)."""
    return [tokenize_conversation(tokenizer, c, max_length) for c in conversations]

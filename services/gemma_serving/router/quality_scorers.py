"""Quality scorers for sampled finished answers: each maps an answer to a score from 0 (bad) to 1 (good), or None
when it does not apply. Cheap built-ins, and an LLM-as-judge scorer that asks a model served by the platform.

A scorer is anything with a `name` (a metric label: keep it short and fixed) and `async score(answer)`; pass your
own to `QualityMonitor(scorers=...)`. Scores are exported as numbers only, never with the text.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from gemma_serving.engines.types import (
    Chunk,
    FinishReason,
    GenerationRequest,
    Message,
    ResponseFormat,
    Sampling,
    TextPart,
)


@dataclass(frozen=True, slots=True)
class Answer:
    """One finished answer to score: the validated request, the whole text and the last chunk (usage, finish)."""

    service: str
    request: GenerationRequest
    text: str
    last: Chunk


class Scorer(Protocol):
    name: str

    async def score(self, answer: Answer) -> float | None:
        """0 (bad) .. 1 (good), or None when the scorer does not apply to this answer."""


class FunctionScorer:
    """A scorer from a plain function of the answer (the built-ins). It runs in a worker thread: the router's event
    loop also carries every other request's tokens."""

    def __init__(self, name: str, function: Callable[[Answer], float | None]) -> None:
        self.name = name
        self._function = function

    async def score(self, answer: Answer) -> float | None:
        return await asyncio.to_thread(self._function, answer)


def repetition_score(answer: Answer, n: int = 3) -> float | None:
    """Share of distinct word n-grams among all n-grams: 1 for no repeated phrase, near 0 for a loop."""
    words = answer.text.lower().split()
    if len(words) < n + 1:
        return None
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams)


def length_score(answer: Answer) -> float | None:
    """0 for an answer cut off at max_tokens (finish reason LENGTH) or an empty one, else 1. Requests that asked to
    ignore the end of turn (fixed-length benchmarks) are not scored."""
    if answer.request.sampling.ignore_eos:
        return None
    if answer.last.finish_reason is FinishReason.LENGTH or not answer.text.strip():
        return 0.0
    return 1.0


def blocked_terms_scorer(terms: list[str]) -> FunctionScorer:
    """1 when the answer contains none of `terms` (case-insensitive, whole words), else 0."""
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(t) for t in terms) + r")\b", re.IGNORECASE) if terms else None

    def score(answer: Answer) -> float | None:
        if pattern is None:
            return None
        return 0.0 if pattern.search(answer.text) else 1.0

    return FunctionScorer("blocked_terms", score)


def json_valid_score(answer: Answer) -> float | None:
    """For requests that asked for JSON (response_format json_object / json_schema): 1 when the answer parses (and
    validates against the schema), else 0. Other requests are not scored."""
    fmt = answer.request.response_format
    if fmt is None or fmt.kind not in ("json_object", "json_schema"):
        return None
    try:
        value = json.loads(answer.text)
    except ValueError:
        return 0.0
    if fmt.kind == "json_object":
        return 1.0 if isinstance(value, dict) else 0.0
    import jsonschema

    try:
        jsonschema.validate(value, fmt.schema or {})
    except jsonschema.ValidationError:
        return 0.0
    return 1.0


GRADES = ("1", "2", "3", "4", "5")
JUDGE_PROMPT = (
    "You grade answers. Rate how well the answer responds to the question, from 1 (useless, off-topic or "
    "incoherent) to 5 (relevant, coherent, safe and correct). Reply with the digit only.\n\n"
    "Question:\n{question}\n\nAnswer:\n{answer}\n\nGrade:"
)


class JudgeScorer:
    """LLM as judge: asks `model` (served by this platform, through the same backend as user requests) to grade the
    answer 1-5, its reply constrained to one of the grades; the score is (grade - 1) / 4. None when the reply holds
    no grade (an engine without structured outputs)."""

    name = "judge"

    def __init__(self, generate: Callable[[GenerationRequest], AsyncIterator[Chunk]], model: str,
                 max_tokens: int = 8, max_chars: int = 2000) -> None:
        self._generate = generate
        self._model = model
        self._max_tokens = max_tokens
        self._max_chars = max_chars

    def _question(self, request: GenerationRequest) -> str:
        users = [m for m in request.messages if m.role == "user"]
        parts = users[-1].parts if users else ()
        return " ".join(p.text for p in parts if isinstance(p, TextPart))

    async def score(self, answer: Answer) -> float | None:
        prompt = JUDGE_PROMPT.format(question=self._question(answer.request)[: self._max_chars],
                                     answer=answer.text[: self._max_chars])
        # Constrained to the five grades (vLLM structured outputs), so any model's reply parses.
        request = GenerationRequest(model=self._model, messages=(Message("user", (TextPart(prompt),)),),
                                    sampling=Sampling(max_tokens=self._max_tokens, temperature=0.0),
                                    response_format=ResponseFormat("choice", choices=GRADES))
        reply = "".join([chunk.text async for chunk in self._generate(request)])
        grade = re.search(r"[1-5]", reply)
        return (int(grade.group(0)) - 1) / 4 if grade else None

"""The optional safety hook: a policy may refuse a request or stop a stream, with a clear status."""

from __future__ import annotations

from typing import Protocol

from gemma_serving.engines.types import GenerationRequest
from gemma_serving.errors import PolicyViolation
from gemma_serving.security_config import SafetySettings


class SafetyPolicy(Protocol):
    def check_request(self, request: GenerationRequest) -> None:
        """Raise PolicyViolation to refuse the request."""

    def check_output(self, text: str) -> None:
        """Called with the output so far; raise PolicyViolation to stop the stream."""


class NoPolicy:
    def check_request(self, request: GenerationRequest) -> None:
        return None

    def check_output(self, text: str) -> None:
        return None


class BlockedTermsPolicy:
    """Example policy: refuses prompts and stops outputs that contain a blocked term (case-insensitive)."""

    def __init__(self, terms: list[str]) -> None:
        self._terms = [t.lower() for t in terms if t]

    def _hit(self, text: str) -> bool:
        low = text.lower()
        return any(term in low for term in self._terms)

    def check_request(self, request: GenerationRequest) -> None:
        for m in request.messages:
            for p in m.parts:
                if self._hit(getattr(p, "text", "")):
                    raise PolicyViolation("the request contains a blocked term (content policy)")

    def check_output(self, text: str) -> None:
        if self._hit(text):
            raise PolicyViolation("the output was stopped by the content policy")


def build_policy(settings: SafetySettings) -> SafetyPolicy:
    if settings.policy == "blocked_terms":
        return BlockedTermsPolicy(settings.blocked_terms)
    return NoPolicy()

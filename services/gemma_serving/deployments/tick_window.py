"""The replica's coalescing window (deployment.stream_flush_ms .. stream_flush_max_ms), widened while engine steps
are slow against it.

A paced stream's message carries what the engine produced in one window: window / step tokens. When a step is as
long as the window or longer, every message carries one token and coalescing merges nothing: each token then costs a
pass through the replica and the router (bench/wake_cost.py: ~0.6 ms of router CPU per lone chunk on a 2-core VM).
So once per `ADJUST_S` the window is re-derived from the tokens its paced messages carried: `TOKENS_PER_MESSAGE`
engine steps, never below `stream_flush_ms` (a fast engine keeps the short window and the smooth stream) and never
above `stream_flush_max_ms` (a stream still shows tokens at least that often while the engine makes them).
"""

from __future__ import annotations

#: Tokens a paced message should carry (the window aims at this many engine steps).
TOKENS_PER_MESSAGE = 3
#: How often (s) the window is re-derived, and the fewest paced messages a re-derivation needs.
ADJUST_S, MIN_MESSAGES = 1.0, 8


class TickWindow:
    """`seconds`: the current window. `sent(tokens, now)` after every paced message (one that waited a tick):
    returns True when the window changed (the engine's output reads should follow it)."""

    __slots__ = ("seconds", "_min_s", "_max_s", "_tokens", "_messages", "_next_at")

    def __init__(self, min_s: float, max_s: float) -> None:
        self.seconds = self._min_s = min_s
        self._max_s = max(max_s, min_s)  # a maximum at or below the minimum keeps the window fixed
        self._tokens = self._messages = 0
        self._next_at = 0.0

    @property
    def adaptive(self) -> bool:
        return self._max_s > self._min_s

    def sent(self, tokens: int, now: float) -> bool:
        self._tokens += tokens
        self._messages += 1
        if now < self._next_at:
            return False
        self._next_at = now + ADJUST_S
        messages, tokens_sent = self._messages, self._tokens
        self._tokens = self._messages = 0
        if messages < MIN_MESSAGES or not self.adaptive:
            return False
        step = self.seconds * messages / max(tokens_sent, 1)  # a message holds window / step tokens
        window = min(max(TOKENS_PER_MESSAGE * step, self._min_s), self._max_s)
        changed = abs(window - self.seconds) > 0.001
        self.seconds = window
        return changed

"""deployments/tick_window.py: the coalescing window follows the engine's step between its bounds."""

from __future__ import annotations

import pytest

from gemma_serving.deployments import tick_window
from gemma_serving.deployments.tick_window import TickWindow


def _feed(window: TickWindow, *, tokens_per_message: int, messages: int, at: float) -> bool:
    """`messages` paced messages at time `at` (the first one also opens the adjustment period)."""
    changed = False
    for _ in range(messages):
        changed = window.sent(tokens_per_message, at) or changed
    return changed


def _settle(window: TickWindow, step_s: float, periods: int = 6, start: float = 0.0) -> float:
    """Drive `window` like a replica whose engine makes a token every `step_s`: each message carries what one
    window held (at least one token), from time `start`."""
    at = start
    for _ in range(periods):
        per_message = max(1, round(window.seconds / step_s))
        _feed(window, tokens_per_message=per_message, messages=20, at=at)
        at += tick_window.ADJUST_S
    window.sent(max(1, round(window.seconds / step_s)), at)
    return window.seconds


def test_a_fast_engine_keeps_the_shortest_window():
    window = TickWindow(0.02, 0.04)
    assert _settle(window, step_s=0.002) == 0.02  # ten tokens per message: nothing to gain


def test_slow_steps_widen_the_window_to_about_three_steps():
    window = TickWindow(0.02, 0.08)
    assert _settle(window, step_s=0.015) == pytest.approx(3 * 0.015, rel=0.2)


def test_the_window_never_passes_its_maximum():
    window = TickWindow(0.02, 0.04)
    assert _settle(window, step_s=0.03) == 0.04  # one token per message would want 90 ms


def test_the_window_shrinks_back_when_the_engine_speeds_up():
    window = TickWindow(0.02, 0.04)
    _settle(window, step_s=0.03)
    assert _settle(window, step_s=0.004, start=100.0) == 0.02


def test_one_adjustment_per_period_and_only_over_enough_messages():
    window = TickWindow(0.02, 0.04)
    assert not window.sent(1, 0.0)  # opens a period
    assert not _feed(window, tokens_per_message=1, messages=tick_window.MIN_MESSAGES - 3, at=0.5)  # inside it
    assert not window.sent(1, tick_window.ADJUST_S + 0.1)  # it closed with too few messages to judge
    assert window.seconds == 0.02
    assert not _feed(window, tokens_per_message=1, messages=tick_window.MIN_MESSAGES, at=tick_window.ADJUST_S + 0.5)
    assert window.sent(1, 2 * tick_window.ADJUST_S + 0.2)  # enough one-token messages: it widens
    assert window.seconds == 0.04


def test_a_maximum_at_or_below_the_minimum_keeps_the_window_fixed():
    for maximum in (0.02, 0.01):
        window = TickWindow(0.02, maximum)
        assert not window.adaptive
        assert _settle(window, step_s=0.05) == 0.02

"""Measured facts of the test session (engine start, scale-up and recovery times), printed in pytest's summary."""

from __future__ import annotations

SESSION_FACTS: dict[str, str] = {}

"""Engines behind the Engine protocol: vLLM (production), fake (unit tests only)."""

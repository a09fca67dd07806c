"""Tiny Gemma checkpoints for tests and local development, and model-source resolution.

``resolve_model_source("tiny://text")`` (or ``tiny://vision``, ``tiny://gemma3n``) builds a
few-MB random-weight checkpoint with a locally trained Gemma-style tokenizer on first use
and returns its directory; any other source is returned as a local path.
"""

from __future__ import annotations

from typing import Any

from .build import MODEL_NAMES, build_models, default_cache_dir, resolve_model_source

__all__ = ["DEFAULT_CACHE_DIR", "MODEL_NAMES", "build_models", "default_cache_dir", "resolve_model_source"]


def __getattr__(name: str) -> Any:
    """Compute ``DEFAULT_CACHE_DIR`` lazily (it depends on the environment at access time)."""
    if name == "DEFAULT_CACHE_DIR":
        return default_cache_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Structured JSON request logs. Prompt and output text never appear: only a salted hash of the prompt."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets

from gemma_serving.engines.types import GenerationRequest

REQUEST_LOGGER = "gemma_serving.requests"
#: Per-process salt: hashes correlate repeats within a replica's logs but cannot be reversed by lookup tables.
_SALT = secrets.token_bytes(16)


def prompt_hash(request: GenerationRequest) -> str:
    h = hashlib.sha256(_SALT)
    for m in request.messages:
        for p in m.parts:
            h.update(getattr(p, "text", "").encode())
    return h.hexdigest()[:16]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        body = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        body.update(getattr(record, "fields", {}))
        return json.dumps(body, ensure_ascii=False, default=str)


def configure_request_logging() -> logging.Logger:
    """The request logger, writing JSON lines to stderr (idempotent)."""
    logger = logging.getLogger(REQUEST_LOGGER)
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger

"""Retry policy shared by the sync and async clients: UNAVAILABLE and RESOURCE_EXHAUSTED are retried, honouring the
server's retry delay (the `retry-after-ms` trailer, mirrored from google.rpc.RetryInfo)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    base_delay_s: float = 0.2
    max_delay_s: float = 10.0

    def delay(self, error: grpc.RpcError, attempt: int) -> float | None:
        """Seconds to wait before retry number `attempt` (1-based), or None to give up."""
        if attempt >= self.attempts or error.code() not in RETRYABLE:
            return None
        trailers = dict(error.trailing_metadata() or ())
        if "retry-after-ms" in trailers:
            return min(int(trailers["retry-after-ms"]) / 1000, self.max_delay_s)
        return min(self.base_delay_s * 2 ** (attempt - 1), self.max_delay_s)

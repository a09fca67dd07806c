"""What one delta looks like on the channel: a msgspec struct encoded as a msgpack array.

msgpack, not pickle: the router decodes whatever reaches its channel port, and a typed decoder refuses anything that
is not a list of deltas instead of executing it.
"""

from __future__ import annotations

import msgspec

from gemma_serving.engines.types import Chunk, FinishReason, TokenLogprob
from gemma_serving.errors import GemmaServingError, InternalError, named


class Delta(msgspec.Struct, array_like=True, gc=False):
    """New output of one stream since its previous delta."""

    #: The router-chosen stream id (random 63-bit, a capability: only the router and the replica know it).
    stream: int
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish: str | None = None
    #: Seconds from the replica accepting the call to this delta (first delta only): the router derives queue time
    #: from it without comparing clocks across hosts.
    replica_s: float | None = None
    #: The stream's last delta.
    end: bool = False
    #: With sampling.logprobs: (token, logprob, ((alternative, logprob), ...)) per token of `text`.
    logprobs: list[tuple[str, float, list[tuple[str, float]]]] | None = None
    #: A call that failed on the replica (direct calls, deltas/calls.py): (error class name, message, field,
    #: retry_after_s) of a platform error; the stream's last delta.
    error: tuple[str, str, str | None, float | None] | None = None


ENCODER = msgspec.msgpack.Encoder()


def error_fields(exc: BaseException) -> tuple[str, str, str | None, float | None]:
    """What a replica sends of a failed call: a platform error's class and details; anything else is internal
    (its text stays in the replica's log, never on the wire)."""
    if isinstance(exc, GemmaServingError):
        return type(exc).__name__, exc.message, exc.field, exc.retry_after_s
    return InternalError.__name__, "the service failed to generate a response", None, None


def error_from_fields(fields: tuple[str, str, str | None, float | None]) -> GemmaServingError:
    """The platform error a failed call's delta stands for (InternalError for a class this side does not know)."""
    name, message, field, retry_after_s = fields
    return named(name)(message, field=field, retry_after_s=retry_after_s)


def decoder() -> msgspec.msgpack.Decoder:
    """A decoder of one channel message (a batch of deltas); raises msgspec errors on anything else."""
    return msgspec.msgpack.Decoder(list[Delta])


def merge(deltas: list[Delta], queue_seconds: float | None = None) -> Chunk:
    """One chunk equivalent to `deltas` in order (all of one stream)."""
    last = deltas[-1]
    text = last.text if len(deltas) == 1 else "".join(d.text for d in deltas)
    finish = FinishReason(last.finish) if last.finish is not None else None
    logprobs = ()
    if last.logprobs is not None or (len(deltas) > 1 and any(d.logprobs for d in deltas)):
        logprobs = tuple(TokenLogprob(token, logprob, tuple(tuple(a) for a in top))
                         for d in deltas if d.logprobs for token, logprob, top in d.logprobs)
    return Chunk(text, last.prompt_tokens, last.completion_tokens, finish, queue_seconds, logprobs=logprobs)
